"""What the notifier remembers across restarts, in the KV bucket cropcron_notify: the applied
config (key "config"), each group ("group.<channel>.<hash>"), per-job state ("job.<job key>": last
success, the kinds firing) and the services reported down ("state.down")."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from services.notifier.groups import Group
from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.events import AlertLevel
from shared.kv_read import bucket_entries
from shared.names import name_of_key, subject_key
from shared.notify_config import NotificationsConfig

log = logging.getLogger("cropcron.notifier")

JOB_PREFIX = "job."
DOWN_KEY = "state.down"
EXPECT_KEY = "state.expect"


class JobWatch(BaseModel):
    last_success: datetime | None = None
    firing: dict[str, AlertLevel] = Field(default_factory=dict)  # kind -> level, cleared by a success
    overdue_for: datetime | None = None  # the instant an overdue alert was raised for


class ExpectState(BaseModel):
    """The data-completeness alarms' memory (services/notifier/expect.py)."""

    since: datetime | None = None  # flights closed before the first check are not judged
    judged: dict[str, datetime] = Field(default_factory=dict)  # flight id -> closed_at, recent ones
    no_uploads: dict[str, str] = Field(default_factory=dict)  # expectation key -> day raised (ISO date)
    incomplete: dict[str, str] = Field(default_factory=dict)  # job -> the incomplete flight that fired


class JobsState:
    """Per-job watch state (KV key "job.<job key>") and the services reported down ("state.down").
    A change to what is firing is written before the input is acked; a last success that merely
    moved is written with the next periodic save (history can re-seed it after a crash), so a
    busy system costs no KV write per successful run."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobWatch] = {}
        self.down: dict[str, str] = {}  # service name -> alert level raised
        self.dirty: set[str] = set()
        self.lazy: set[str] = set()
        self.down_dirty = False
        self.expect = ExpectState()
        self.expect_dirty = False

    def touch(self, job: str, urgent: bool) -> None:
        (self.dirty if urgent else self.lazy).add(job)


async def load_groups(js: JetStreamContext) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for key, raw in (await bucket_entries(js, wire.KV_NOTIFY, "group.")).items():
        try:
            groups[key] = Group.model_validate_json(raw)
        except ValidationError as exc:
            log.error("notifier: ignoring unreadable group %s: %s", key, exc)
    return groups


async def load_state(js: JetStreamContext) -> JobsState:
    state = JobsState()
    # only its own keys: the groups (load_groups) and the config are read on their own
    entries = {**await bucket_entries(js, wire.KV_NOTIFY, JOB_PREFIX),
               **await bucket_entries(js, wire.KV_NOTIFY, "state.")}
    for key, raw in entries.items():
        if not key.startswith(JOB_PREFIX) and key not in (DOWN_KEY, EXPECT_KEY):
            continue
        try:
            if key == EXPECT_KEY:
                state.expect = ExpectState.model_validate_json(raw)
            elif key == DOWN_KEY:
                state.down = {str(k): str(v) for k, v in json.loads(raw).items()}
            else:
                name = name_of_key(key.removeprefix(JOB_PREFIX))
                if name is None:
                    raise ValueError("no job name has this key")
                state.jobs[name] = JobWatch.model_validate_json(raw)
        except (ValidationError, ValueError, AttributeError) as exc:
            log.error("notifier: ignoring unreadable state %s: %s", key, exc)
    return state


async def put_many(bus: Bus, entries: list[tuple[str, bytes]]) -> None:
    """KV puts as one pipelined batch of publishes to $KV.cropcron_notify.<key> (one round trip
    instead of one per key); returns once every one is stored."""
    if not entries:
        return
    stamp = uuid.uuid4().hex  # unique ids: a later put of the same key must never be dropped as a duplicate
    items = [(wire.kv_put_subject(wire.KV_NOTIFY, key), value, f"notify.{stamp}.{i}")
             for i, (key, value) in enumerate(entries)]
    if await publish_until_acked(bus, items, "notifier: state"):
        raise ConnectionError("notifier state not stored")


async def save_state(bus: Bus, state: JobsState, everything: bool = False) -> None:
    names = state.dirty | (state.lazy if everything else set())
    entries = [(JOB_PREFIX + subject_key(name), state.jobs[name].model_dump_json().encode())
               for name in sorted(names) if name in state.jobs]
    if state.down_dirty:
        entries.append((DOWN_KEY, json.dumps(state.down).encode()))
    if state.expect_dirty:
        entries.append((EXPECT_KEY, state.expect.model_dump_json().encode()))
    await put_many(bus, entries)
    state.dirty -= names
    state.lazy -= names
    state.down_dirty = state.expect_dirty = False


async def load_config(kv: KeyValue) -> NotificationsConfig | None:
    raw = await _get(kv, wire.NOTIFY_CONFIG_KEY)
    if raw is None:
        return None
    try:
        return NotificationsConfig.model_validate_json(raw)
    except ValidationError as exc:
        log.error("notifier: the applied notifications config is unreadable (%s); keeping the previous one", exc)
        return None


def config_bytes(config: NotificationsConfig) -> bytes:
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    return json.dumps(data).encode()


async def _get(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    return entry.value or None
