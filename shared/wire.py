"""Every name that crosses the wire: streams, subjects, consumers, KV buckets, headers.

Nothing else in the code base spells a subject or bucket name; other modules (and other
programs that integrate with cropcron) import from here. docs/events.md documents them.
"""

from __future__ import annotations

from typing import Final, Literal

from shared.names import subject_key

PREFIX: Final = "cropcron"

# -- triggers: what the runners consume ------------------------------------------------
# One work-queue stream; subject carries the priority band so each band has its own
# durable consumer and runners can prefer higher bands when saturated.
STREAM_TRIGGERS: Final = "CROPCRON_TRIGGERS"
TRIGGER_SUBJECTS: Final = f"{PREFIX}.trigger.>"

Band = Literal["high", "normal", "low"]
BANDS: Final[tuple[Band, ...]] = ("high", "normal", "low")  # order = preference when saturated


def band_for_priority(priority: int) -> Band:
    """Priority 1..10, 10 most urgent. Three bands keep the consumer count fixed (DESIGN.md:
    one consumer per job does not scale past ~1,000 jobs)."""
    if priority >= 8:
        return "high"
    if priority >= 4:
        return "normal"
    return "low"


def trigger_subject(band: Band, job: str) -> str:
    """`cropcron.trigger.<band>.<job key>`: the job's name as a subject token (shared/names.py)."""
    return f"{PREFIX}.trigger.{band}.{subject_key(job)}"


def runner_consumer(band: Band) -> str:
    return f"runner-{band}"


# -- run events: what runners (and the timer, for `missed`) publish -----------------------
STREAM_RUNS: Final = "CROPCRON_RUNS"
RUN_EVENT_SUBJECTS: Final = f"{PREFIX}.run.>"
# Malformed or refused input (bad trigger payloads, unknown jobs) is reported here.
REJECTED_SUBJECTS: Final = f"{PREFIX}.rejected.>"


def run_event_subject(job: str, state: str) -> str:
    """`cropcron.run.<job key>.<state>`: subscribe to `cropcron.run.<job key>.>` for one job,
    `cropcron.run.*.dead` for every dead run. The key is the name itself for ASCII names."""
    return f"{PREFIX}.run.{subject_key(job)}.{state}"


def rejected_subject(source: str) -> str:
    return f"{PREFIX}.rejected.{source}"


# Closed flight batches (issue 14), kept with the run events: history lists them, other modules
# may follow them (the stream's limits retention); the dispatcher publishes one per batch.
FLIGHT_SUBJECTS: Final = f"{PREFIX}.flight.>"


def flight_subject(watch: str) -> str:
    """`cropcron.flight.<watch key>`: a FlightClosed for a batch of that watch's files."""
    return f"{PREFIX}.flight.{subject_key(watch)}"


HISTORY_CONSUMER: Final = "history"

# -- file arrivals (issue 3): the watcher, and drone upload tools, publish here ------------
# One FileEvent per complete file, Nats-Msg-Id = FileEvent.id. The dispatcher (part of the
# watcher service) turns each into triggers for the watch's `on_file` jobs and into flight
# batches for its `on_batch` jobs. Limits retention: other modules may read arrivals too.
STREAM_FILES: Final = "CROPCRON_FILES"
FILE_SUBJECTS: Final = f"{PREFIX}.file.>"
DISPATCH_CONSUMER: Final = "dispatch"
HISTORY_FILES_CONSUMER: Final = "history-files"  # on STREAM_FILES: every arrival -> Postgres


def file_subject(watch: str) -> str:
    """`cropcron.file.<watch key>`: where a complete file of that watch is announced."""
    return f"{PREFIX}.file.{subject_key(watch)}"


KV_WATCHES: Final = "cropcron_watches"  # key: watch key -> WatchSpec JSON (from `apply`)
KV_BATCHES: Final = "cropcron_batches"  # open flight batches, so they survive restarts
# Keys in KV_BATCHES: "h.<batch id>" -> the batch's header, "f.<batch id>.<file id>" -> one file.
# A closed batch is purged from the bucket's stream (NATS names it "KV_<bucket>"): no tombstones.
KV_BATCHES_STREAM: Final = f"KV_{KV_BATCHES}"


DISPATCH_LEADER_KEY: Final = "leader"  # in KV_BATCHES: the active dispatcher's lease (one at a time)


def batch_header_key(batch_id: str) -> str:
    return f"h.{batch_id}"


def batch_file_key(batch_id: str, file_id: str) -> str:
    return f"f.{batch_id}.{file_id}"

# -- alerts and notifications (issue 4) ---------------------------------------------------
# Any service or module raises an Alert on `cropcron.alert.<level>.<kind>`; the notifier groups
# alerts into notifications and delivers them; both, and every delivery attempt, are kept in
# history. Limits retention (the notifier and history each read every alert).
STREAM_ALERTS: Final = "CROPCRON_ALERTS"
ALERT_SUBJECTS: Final = f"{PREFIX}.alert.>"
ALERT_LEVELS: Final = ("info", "warning", "error", "critical")


def alert_subject(level: str, kind: str) -> str:
    return f"{PREFIX}.alert.{level}.{kind}"


# Raised alerts only (one filter per level): the notifier's intake must not read the delivery
# records that share the stream.
ALERT_RAISED_SUBJECTS: Final = tuple(f"{PREFIX}.alert.{level}.>" for level in ALERT_LEVELS)
NOTIFIER_ALERTS_CONSUMER: Final = "notifier"  # on STREAM_ALERTS: raised alerts -> groups
NOTIFIER_RUNS_CONSUMER: Final = "notifier"  # on STREAM_RUNS: run events -> alerts
HISTORY_ALERTS_CONSUMER: Final = "history-alerts"  # on STREAM_ALERTS: everything -> Postgres


def delivery_subject(channel: str) -> str:
    """`cropcron.alert.delivery.<channel>`: one DeliveryRecord per delivery attempt."""
    return f"{PREFIX}.alert.delivery.{channel}"


# Grouped notifications waiting for delivery: a work queue, so a notification disappears only
# once its channel accepted it or it failed for good (the outbox, RELIABILITY A10).
STREAM_NOTIFY: Final = "CROPCRON_NOTIFY"
NOTIFY_SUBJECTS: Final = f"{PREFIX}.notify.>"
DELIVER_CONSUMER: Final = "deliver"


def notify_subject(channel: str) -> str:
    return f"{PREFIX}.notify.{channel}"


KV_NOTIFY: Final = "cropcron_notify"  # key "config": the applied notifications section; group state
NOTIFY_CONFIG_KEY: Final = "config"


# -- request/reply ---------------------------------------------------------------------
HISTORY_RUNS: Final = f"{PREFIX}.history.runs"
HISTORY_STATS: Final = f"{PREFIX}.history.stats"
HISTORY_LAST: Final = f"{PREFIX}.history.last"  # last state per job, for `cropcron jobs`
HISTORY_CLEANUP: Final = f"{PREFIX}.history.cleanup"
HISTORY_ALERTS: Final = f"{PREFIX}.history.alerts"  # alerts and their deliveries (issue 4)
# reports for the dashboard's overview and charts (issue 5; services/history/reports.py)
HISTORY_REPORT_HOURLY: Final = f"{PREFIX}.history.report.hourly"  # runs per hour by state
HISTORY_REPORT_DURATIONS: Final = f"{PREFIX}.history.report.durations"  # duration per run of one job
HISTORY_REPORT_COUNTS: Final = f"{PREFIX}.history.report.counts"  # runs by state in a time range
HISTORY_REPORT_DIGEST: Final = f"{PREFIX}.history.report.digest"  # a digest's runs, failures, overdue jobs
HISTORY_FLIGHTS: Final = f"{PREFIX}.history.flights"  # closed flights, or one flight with its files
HISTORY_REFUSED: Final = f"{PREFIX}.history.refused"  # files the watcher refused, with the reason
HISTORY_REPORT_FILES: Final = f"{PREFIX}.history.report.files"  # files per hour per watch
HISTORY_REPORT_UPLOADS: Final = f"{PREFIX}.history.report.uploads"  # a day's uploads per watch (expect:)
HISTORY_QUEUE: Final = "history"

# -- KV buckets ------------------------------------------------------------------------
# Jobs and watches are keyed by their subject key (shared/names.py: subject_key), never the raw name.
KV_JOBS: Final = "cropcron_jobs"  # key: job key -> JobSpec JSON; key "_system" -> SystemSpec
KV_JOB_STATE: Final = "cropcron_job_state"  # key: job key -> JobState (paused, resumed_at)
KV_TIMER: Final = "cropcron_timer"  # keys below
KV_LEASES: Final = "cropcron_leases"  # key: job key -> active run leases (overlap/concurrency)
KV_SERVICES: Final = "cropcron_services"  # key: "<service>.<instance>" -> last heartbeat


def kv_put_subject(bucket: str, key: str) -> str:
    """A KV put is a JetStream publish to this subject (lets a put ride in a publish batch)."""
    return f"$KV.{bucket}.{key}"


SYSTEM_KEY: Final = "_system"
TIMER_WATERMARK_KEY: Final = "watermark"  # every instant <= watermark has been fired
TIMER_LEADER_KEY: Final = "leader"  # the active timer's lease; others stand by

# -- headers ---------------------------------------------------------------------------
HEADER_MSG_ID: Final = "Nats-Msg-Id"  # JetStream de-duplication
# JetStream atomic batch publish (shared/atomic.py; server 2.12+)
HEADER_BATCH_ID: Final = "Nats-Batch-Id"
HEADER_BATCH_SEQ: Final = "Nats-Batch-Sequence"
HEADER_BATCH_COMMIT: Final = "Nats-Batch-Commit"
HEADER_KV_OPERATION: Final = "KV-Operation"  # "DEL" on a KV delete marker
# a request/reply answer too large for one message comes as chunks 0..N-1 (shared/reply.py)
HEADER_CHUNK: Final = "Cropcron-Chunk"
HEADER_CHUNKS: Final = "Cropcron-Chunks"
