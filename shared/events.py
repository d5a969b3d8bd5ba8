"""Typed messages on the bus. Every model carries `schema_version`; readers ignore unknown fields,
so a newer producer never breaks an older consumer. docs/events.md is the public contract."""

from __future__ import annotations

import functools
import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from shared.digest import DigestReport
from shared.names import normalise_name

SCHEMA_VERSION = 1


class RunState(StrEnum):
    STARTED = "started"  # an attempt began
    SUCCEEDED = "succeeded"  # terminal
    FAILED = "failed"  # an attempt failed; followed by retrying or dead
    RETRYING = "retrying"  # will be redelivered at next_attempt_at
    DEAD = "dead"  # terminal: retries exhausted
    SKIPPED = "skipped"  # terminal: overlap policy, or the job is paused
    MISSED = "missed"  # terminal: the timer decided not to run this instant (reason says why)


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.DEAD, RunState.SKIPPED, RunState.MISSED})

# Within one attempt, a later state never yields to an earlier one (events can arrive out of
# order after redelivery). A higher attempt always wins: that is the stale-runner fence.
STATE_RANK: dict[RunState, int] = {
    RunState.STARTED: 1,
    RunState.FAILED: 2,
    RunState.RETRYING: 3,
    RunState.DEAD: 3,
    RunState.SUCCEEDED: 3,
    RunState.SKIPPED: 3,
    RunState.MISSED: 3,
}

TriggerKind = Literal["tick", "manual", "file", "batch"]
# a job or watch name as people wrote it, NFC-normalised on read: a program that sends the
# decomposed form of a Korean name still means the job the config named (shared/names.py)
Name = Annotated[str, AfterValidator(normalise_name)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Trigger(_Message):
    """Asks a runner to run a job once. Published on wire.trigger_subject(band, job)."""

    run_id: str = Field(min_length=1, max_length=128)
    job: Name = Field(min_length=1, max_length=64)
    kind: TriggerKind
    scheduled_at: datetime | None = None  # the instant (UTC) a tick stands for
    created_at: datetime
    requested_by: str | None = None  # manual runs: who asked
    # an instant run late by the job's catch-up policy: at the job's concurrency limit it waits
    # its turn instead of being skipped (catchup: all promises each caught-up instant runs)
    catchup: bool = False
    # a tick published ahead of its instant (CROPCRON_TICK_LEAD): the runner hands its first
    # delivery back to the broker until just before the instant and starts it at the instant on its
    # own clock; its attempt is the delivery count minus that first delivery (docs/events.md)
    early: bool = False
    # reserved for the watcher/batches (later issues): file and batch details
    data: dict[str, JsonValue] = Field(default_factory=dict)


class FileRef(BaseModel):
    """The file a file run was run for, on each of its run events (history shows it with the run)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    watch: str
    rel_path: str  # display form (U+FFFD for bytes that are not UTF-8, as FileEvent.rel_path)
    size: int = Field(ge=0)


class RunEvent(_Message):
    """One step in a run's life. Published on wire.run_event_subject(job, state)."""

    run_id: str
    job: Name
    job_type: str | None = None
    state: RunState
    attempt: int = Field(ge=0)  # 1 for the first attempt; 0 for runs that never started
    at: datetime  # when this event happened (UTC)
    trigger_kind: TriggerKind | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    output_tail: str | None = None
    result: JsonValue = None
    reason: str | None = None  # why missed/skipped/dead
    next_attempt_at: datetime | None = None  # retrying
    runner: str | None = None
    file: FileRef | None = None  # a file run (trigger kind "file"): the file it was run for


    def msg_id(self) -> str:
        # one message per (run, attempt, state): republishing the same step is deduplicated
        return f"{self.run_id}.{self.attempt}.{self.state.value}"


class Rejected(_Message):
    """Input that was refused (malformed trigger, unknown job, ...), so it is never silently lost."""

    source: str  # e.g. "trigger"
    subject: str
    reason: str
    at: datetime
    payload_excerpt: str = ""  # first bytes, decoded with replacement


class FileEvent(_Message):
    """A complete file arrived in a watch (issue 3). Published on wire.file_subject(watch) with
    Nats-Msg-Id = id, by the watcher or by a drone upload tool (docs/events.md).

    Paths: `rel_path` is relative to the watch root with '/' separators. A name that is not valid
    UTF-8 cannot travel in JSON text, so `rel_path_b64` then carries its exact bytes (base64) and
    `rel_path` a display form with U+FFFD; readers use the bytes when they are present."""

    id: str = Field(min_length=1, max_length=128)  # file_event_id(watch, rel_path bytes, size, mtime_ns)
    watch: Name = Field(min_length=1, max_length=64)
    path: str  # absolute path on the machine that detected it (display; rel_path is authoritative)
    rel_path: str = Field(min_length=1)
    rel_path_b64: str | None = None
    size: int = Field(ge=0)  # bytes
    mtime_ns: int = Field(ge=0)  # st_mtime_ns: nanoseconds since the epoch
    detected_at: datetime  # when the file was judged complete (UTC)
    sha256: str | None = None  # of the content, when the detector computed it
    source: str = "watcher"  # who announced it: "watcher", "publish-file", an upload tool's name


def file_event_id(watch: str, rel_path: bytes, size: int, mtime_ns: int) -> str:
    """Deterministic (DESIGN guarantee 1): the same file version always gets the same id, so a
    re-scan, a restart or an upload tool announcing it again is de-duplicated.
    sha256("file\0<watch>\0<rel_path bytes>\0<size>\0<mtime_ns>")[:32] (docs/events.md)."""
    digest = hashlib.sha256(b"file\0" + watch.encode() + b"\0" + rel_path + b"\0")
    digest.update(f"{size}\0{mtime_ns}".encode())
    return digest.hexdigest()[:32]


def file_run_id(job: str, file_id: str) -> str:
    """The run of `job` for one file version: sha256("file-run\0<job>\0<file id>")[:32]. Derived per
    job, so two on_file jobs of one watch get two runs, and the same arrival always the same run."""
    return hashlib.sha256(f"file-run\0{job}\0{file_id}".encode()).hexdigest()[:32]


def batch_id(job: str, first_file_id: str) -> str:
    """A flight batch (and its run) is named by its job and its first file:
    sha256("batch\0<job>\0<first file id>")[:32]. A restarted dispatcher derives the same id."""
    return hashlib.sha256(f"batch\0{job}\0{first_file_id}".encode()).hexdigest()[:32]


class BatchFile(BaseModel):
    """One file of a flight batch, as the batch trigger carries it (compact: no absolute path)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    rel_path: str
    rel_path_b64: str | None = None  # exact bytes, when the name is not UTF-8 (as in FileEvent)
    size: int = Field(ge=0)
    mtime_ns: int = Field(ge=0)


BatchClose = Literal["quiet", "manifest", "count", "max_wait", "full"]


class BatchInfo(BaseModel):
    """`Trigger.data["batch"]` of a batch run (kind "batch"): which files, and why it closed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    watch: str
    folder: str  # first-level folder under the root (group_by: folder); "" for gap batches / root files
    partial: bool  # closed by max_wait (or by the size limit) rather than by quiet/manifest/count
    reason: BatchClose
    opened_at: datetime
    closed_at: datetime
    files: list[BatchFile]


class FlightClosed(_Message):
    """A flight batch closed (issue 14): published by the dispatcher beside the batch's trigger on
    wire.flight_subject(watch), Nats-Msg-Id "flight.<batch id>", so history can list flights and
    the notifier judge them against a watch's `expect:` even when no run of the batch happens."""

    job: Name
    batch: BatchInfo


AlertLevel = Literal["info", "warning", "error", "critical"]


class Alert(_Message):
    """Something people should hear about (issue 4). Anyone may publish one on
    wire.alert_subject(level, kind); the notifier routes, groups and delivers it."""

    id: str = Field(min_length=1, max_length=128)  # deterministic where it can be (e.g. "<run_id>.dead")
    level: AlertLevel
    kind: str = Field(min_length=1, max_length=64)  # dead, timeout, missed, overdue, failed, succeeded, service_down, ...
    summary: str  # one line
    text: str = ""  # details, plain text
    job: Name | None = None
    job_type: str | None = None
    run_id: str | None = None
    source: str  # the service or module that raised it
    at: datetime  # UTC
    resolved: bool = False  # true: the condition this fingerprint reported has cleared
    fingerprint: str | None = None  # grouping key; default "<kind>:<job or source>"
    details: dict[str, JsonValue] = Field(default_factory=dict)

    def group_key(self) -> str:
        return self.fingerprint or f"{self.kind}:{self.job or self.source}"


NotificationStatus = Literal["firing", "repeat", "resolved", "test", "digest"]


class Notification(_Message):
    """One grouped message for one channel (issue 4): the notifier publishes it on
    wire.notify_subject(channel) with Nats-Msg-Id = id, so a redelivery after a crash sends the
    SAME notification (an email keeps its Message-ID)."""

    id: str = Field(min_length=1, max_length=200)  # "<channel>.<group hash>.<seq>" (+ ".esc")
    channel: str
    group_key: str
    status: NotificationStatus
    alerts: list[Alert]  # the first few alerts of the group, newest last
    total: int = Field(ge=0)  # how many alerts the message stands for (alerts may be truncated)
    created_at: datetime
    escalated_from: str | None = None  # the channel that failed permanently
    escalation_reason: str | None = None
    # status "digest": a summary from the `digest` chore instead of alerts (shared/digest.py)
    digest: DigestReport | None = None


DeliveryOutcome = Literal["sent", "retry", "failed", "escalated"]


class DeliveryRecord(_Message):
    """One delivery attempt of a notification; published on wire.delivery_subject(channel) so
    history keeps every attempt next to the alerts it carried."""

    notification_id: str
    channel: str
    status: NotificationStatus
    alert_ids: list[str]
    attempt: int = Field(ge=1)
    outcome: DeliveryOutcome
    error: str | None = None
    message_id: str | None = None  # the email Message-ID, when the channel is email
    at: datetime


def tick_run_id(job: str, instant: datetime) -> str:
    """Deterministic: two timers, or one timer restarting, derive the same id for one instant.
    sha256("tick\0<job>\0<instant as %Y-%m-%dT%H:%M:%S.%fZ>")[:32] (docs/events.md)."""
    digest = _job_prefix(job).copy()
    # convert before the cache: aware datetimes differing only in `fold` (the two 01:30s of a
    # fall-back hour) compare equal, so a cache keyed on local times would mix them up
    digest.update(_utc_stamp(instant.astimezone(UTC)))
    return digest.hexdigest()[:32]


# The timer derives an id per job per instant: hash the per-job prefix once, format each instant
# once (at 10,000 jobs/s this was a quarter of the timer's CPU, bench/).
@functools.lru_cache(maxsize=100_000)
def _job_prefix(job: str) -> hashlib._Hash:
    return hashlib.sha256(f"tick\0{job}\0".encode())


@functools.lru_cache(maxsize=1024)
def _utc_stamp(instant: datetime) -> bytes:
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def manual_run_id() -> str:
    return "m" + uuid.uuid4().hex[:31]


def utcnow() -> datetime:
    return datetime.now(UTC)


def decode(model: type[_Message], data: bytes) -> Any:
    """Parse a payload; raises pydantic.ValidationError (or ValueError for bad JSON/version)."""
    parsed = model.model_validate_json(data)
    # Additive changes keep the version (unknown fields are ignored); a bump means a breaking
    # change this reader cannot interpret, so it refuses rather than guesses.
    if parsed.schema_version > SCHEMA_VERSION:
        raise ValueError(f"unsupported schema_version {parsed.schema_version} (this reader knows {SCHEMA_VERSION})")
    return parsed
