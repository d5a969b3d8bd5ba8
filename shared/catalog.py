"""The applied jobs and their run-time state, kept live from the KV buckets.

`cropcron apply` writes job specs into KV_JOBS; `pause`/`resume` write KV_JOB_STATE. Every
service keeps a Catalog, so edits take effect without restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, ValidationError

from shared import wire
from shared.atomic import MAX_BATCH, BatchFailed, ensure_atomic, publish_atomic
from shared.bus import Bus
from shared.config import JobSpec, SystemConfig
from shared.events import utcnow
from shared.kv_read import bucket_entries, bucket_keys
from shared.names import name_of_key, subject_key
from shared.watch_config import WatchConfig

log = logging.getLogger("cropcron.catalog")

M = TypeVar("M", bound=BaseModel)


class JobState(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    paused: bool = False
    changed_at: datetime
    # no catch-up of instants before this (set on resume)
    resumed_at: datetime | None = None


# called with the job name that changed ("" for system, "watch:<name>" for a folder watch).
# KV keys are subject keys (shared/names.py); everything here is keyed by the names themselves.
Listener = Callable[[str], None]


class Catalog:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.specs: dict[str, JobSpec] = {}
        self.states: dict[str, JobState] = {}
        self.system = SystemConfig()
        self.watches: dict[str, WatchConfig] = {}  # path is absolute (resolved by `apply`)
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.jobs_kv: KeyValue | None = None
        self.state_kv: KeyValue | None = None
        self._names: dict[str, str] = {}  # KV key -> name, to forget a deleted job or watch
        self.load_timeout = 30.0  # seconds for each bucket's initial values

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def paused(self, job: str) -> bool:
        state = self.states.get(job)
        return bool(state and state.paused)

    async def start(self) -> None:
        """Load everything, then follow changes. Returns once the initial load is complete."""
        self.jobs_kv = await self._js.key_value(wire.KV_JOBS)
        self.state_kv = await self._js.key_value(wire.KV_JOB_STATE)
        watches_kv = await self._js.key_value(wire.KV_WATCHES)
        for bucket, kv, apply in ((wire.KV_JOBS, self.jobs_kv, self._apply_job),
                                  (wire.KV_JOB_STATE, self.state_kv, self._apply_state),
                                  (wire.KV_WATCHES, watches_kv, self._apply_watch)):
            # the watcher's own "initial values done" marker can come before entries the server
            # already sent (shared/kv_read.py), so the load is done once every key listed from the
            # stream has been seen
            expected = set(await bucket_keys(self._js, bucket))
            watcher = await kv.watchall()
            ready = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._follow(watcher, apply, ready, expected)))
            try:
                await asyncio.wait_for(ready.wait(), self.load_timeout)
            except TimeoutError:  # a key purged meanwhile: it will never be seen; go on
                log.warning("catalog: %s loaded without %d listed key(s): %s", bucket, len(expected),
                            ", ".join(sorted(expected)[:5]))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _follow(self, watcher: KeyValue.KeyWatcher, apply: Callable[[str, bytes | None], None],
                      ready: asyncio.Event, expected: set[str]) -> None:
        async for entry in watcher:
            if entry is not None:  # None: "end of the initial values", which may come too early
                deleted = entry.operation in ("DEL", "PURGE")
                apply(entry.key, None if deleted else entry.value)
                expected.discard(entry.key)
            if not expected:
                ready.set()

    def _apply_job(self, key: str, value: bytes | None) -> None:
        if key == wire.SYSTEM_KEY:
            if value is not None:
                try:
                    self.system = SystemConfig.model_validate_json(value)
                except ValidationError as exc:
                    log.error("ignoring unreadable system config in KV: %s", exc)
            self._notify("")
            return
        if value is None:
            name = self._names.pop(key, None) or name_of_key(key) or key
            self.specs.pop(name, None)
        else:
            spec = _parse_spec(key, value)
            if spec is None:
                return
            name = self._names[key] = spec.name
            self.specs[name] = spec
        self._notify(name)

    async def lookup(self, job: str) -> JobSpec | None:
        """The job's spec straight from KV, for a job applied a moment ago whose watch update has
        not arrived yet. None if there is no such job; bus errors propagate (cannot tell now)."""
        if job == wire.SYSTEM_KEY or self.jobs_kv is None:
            return None
        try:
            entry = await self.jobs_kv.get(subject_key(job))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return _parse_spec(job, entry.value) if entry.value else None

    def _apply_state(self, key: str, value: bytes | None) -> None:
        name = name_of_key(key)
        if name is None:
            log.error("ignoring job state under key %r: no job name has that key", key)
            return
        if value is None:
            self.states.pop(name, None)
        else:
            try:
                self.states[name] = JobState.model_validate_json(value)
            except ValidationError as exc:
                log.error("ignoring unreadable job state %r in KV: %s", name, exc)
                return
        self._notify(name)

    def _apply_watch(self, key: str, value: bytes | None) -> None:
        if value is None:
            name = self._names.pop("watch:" + key, None) or name_of_key(key) or key
            self.watches.pop(name, None)
        else:
            try:
                watch = WatchConfig.model_validate_json(value)
            except ValidationError as exc:
                log.error("ignoring unreadable watch %r in KV: %s", key, exc)
                return
            name = self._names["watch:" + key] = watch.name
            self.watches[name] = watch
        self._notify("watch:" + name)

    def _notify(self, key: str) -> None:
        for listener in self._listeners:
            listener(key)


def _parse_spec(key: str, value: bytes) -> JobSpec | None:
    try:
        return JobSpec.model_validate_json(value)
    except ValidationError as exc:
        log.error("ignoring unreadable job spec %r in KV: %s", key, exc)
        return None


async def read_bucket(js: JetStreamContext, bucket: str, model: type[M]) -> dict[str, M]:
    """Every entry of a bucket by KV key, parsed; the system key and unreadable entries are skipped."""
    out: dict[str, M] = {}
    for key, value in (await bucket_entries(js, bucket)).items():
        if key == wire.SYSTEM_KEY:
            continue
        try:
            out[key] = model.model_validate_json(value)
        except ValidationError as exc:
            log.error("ignoring unreadable %s entry %r: %s", bucket, key, exc)
    return out


async def read_system(js: JetStreamContext) -> SystemConfig:
    """The applied system section (defaults when nothing is applied yet or it is unreadable)."""
    try:
        entry = await (await js.key_value(wire.KV_JOBS)).get(wire.SYSTEM_KEY)
        return SystemConfig.model_validate_json(entry.value or b"{}")
    except (BucketNotFoundError, KeyNotFoundError, KeyDeletedError, ValidationError):
        return SystemConfig()


async def read_specs(js: JetStreamContext) -> dict[str, JobSpec]:
    """The applied jobs by name."""
    return {spec.name: spec for spec in (await read_bucket(js, wire.KV_JOBS, JobSpec)).values()}


async def read_watches(js: JetStreamContext) -> dict[str, WatchConfig]:
    """The applied folder watches by name."""
    return {w.name: w for w in (await read_bucket(js, wire.KV_WATCHES, WatchConfig)).values()}


async def read_states(js: JetStreamContext) -> dict[str, JobState]:
    """Pause state by job name."""
    states = await read_bucket(js, wire.KV_JOB_STATE, JobState)
    return {name: state for key, state in states.items() if (name := name_of_key(key)) is not None}


Changes = dict[str, bytes | None]  # KV key (a subject key) -> new value, None to delete


class ApplyError(RuntimeError):
    """A config could not be stored; what was stored before is unchanged."""


def plan_specs(current: dict[str, JobSpec], system: SystemConfig, specs: dict[str, JobSpec]) -> tuple[
        Changes, tuple[list[str], list[str], list[str]]]:
    """What makes KV hold exactly `specs`: the changed keys, and (added, changed, removed) names."""
    changes: Changes = {wire.SYSTEM_KEY: system.model_dump_json().encode()}
    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    for name, spec in specs.items():
        old = current.get(name)
        if old == spec:
            continue
        (added if old is None else changed).append(name)
        changes[subject_key(name)] = spec.model_dump_json().encode()
    for name in current.keys() - specs.keys():
        removed.append(name)
        changes[subject_key(name)] = None
    return changes, (added, changed, removed)


def plan_watches(current: dict[str, WatchConfig], watches: list[WatchConfig]) -> tuple[
        Changes, tuple[list[str], list[str], list[str]]]:
    changes: Changes = {}
    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    wanted = {w.name: w for w in watches}
    for name, watch in wanted.items():
        old = current.get(name)
        if old == watch:
            continue
        (added if old is None else changed).append(name)
        changes[subject_key(name)] = watch.model_dump_json().encode()
    for name in current.keys() - wanted.keys():
        removed.append(name)
        changes[subject_key(name)] = None
    return changes, (added, changed, removed)


def check_fits(bus: Bus, bucket: str, changes: Changes) -> None:
    """Refuse, before anything is written, a value the broker would refuse (its max_payload)."""
    limit = bus.nc.max_payload - 512  # the subject and headers ride in the same message
    for key, value in changes.items():
        if value is not None and len(value) > limit:
            what = ("system section" if key == wire.SYSTEM_KEY
                    else f"{bucket.removeprefix('cropcron_')[:-1]} {name_of_key(key) or key!r}")
            raise ApplyError(f"{what} is {len(value) / 1024:.0f} KiB stored; the broker takes at most "
                             f"{limit // 1024} KiB in one message (its max_payload). Nothing was applied")


async def write_changes(bus: Bus, bucket: str, changes: Changes, timeout: float = 10.0) -> None:
    """Store `changes` in `bucket` all-or-nothing (one atomic batch; a config changing more than
    1,000 keys at once is written in several, each all-or-nothing)."""
    if not changes:
        return
    check_fits(bus, bucket, changes)
    await ensure_atomic(bus.js, f"KV_{bucket}")
    items = [(wire.kv_put_subject(bucket, key), value if value is not None else b"",
              {} if value is not None else {wire.HEADER_KV_OPERATION: "DEL"}) for key, value in changes.items()]
    if len(items) > MAX_BATCH:
        log.warning("catalog: %d changes to %s are written in %d batches; each is all-or-nothing, the whole is not",
                    len(items), bucket, -(-len(items) // MAX_BATCH))
    for start in range(0, len(items), MAX_BATCH):
        try:
            await publish_atomic(bus.nc, items[start:start + MAX_BATCH], timeout)
        except BatchFailed as exc:
            raise ApplyError(f"the broker refused the change to {bucket} ({exc}); nothing of it was stored") from None


async def write_specs(bus: Bus, system: SystemConfig, specs: dict[str, JobSpec]) -> tuple[
        list[str], list[str], list[str]]:
    """Make KV hold exactly `specs`, all-or-nothing. Returns (added, changed, removed) job names."""
    changes, names = plan_specs(await read_specs(bus.js), system, specs)
    await write_changes(bus, wire.KV_JOBS, changes)
    return names


async def write_watches(bus: Bus, watches: list[WatchConfig]) -> tuple[list[str], list[str], list[str]]:
    """Make KV hold exactly `watches` (paths already absolute), all-or-nothing."""
    changes, names = plan_watches(await read_watches(bus.js), watches)
    await write_changes(bus, wire.KV_WATCHES, changes)
    return names


async def set_paused(js: JetStreamContext, job: str, paused: bool) -> None:
    kv = await js.key_value(wire.KV_JOB_STATE)
    now = utcnow()
    state = JobState(paused=paused, changed_at=now, resumed_at=None if paused else now)
    await kv.put(subject_key(job), state.model_dump_json().encode())
