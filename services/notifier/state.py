"""What the notifier remembers across restarts, in the KV bucket cropcron_notify: the applied
config (key "config"), each group ("group.<channel>.<hash>"), per-job state ("state.jobs": last
success, the kinds firing) and the services reported down ("state.down")."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from services.notifier.groups import Group
from shared import wire
from shared.events import AlertLevel
from shared.notify_config import NotificationsConfig

log = logging.getLogger("cropcron.notifier")

JOBS_KEY = "state.jobs"
DOWN_KEY = "state.down"


class JobWatch(BaseModel):
    last_success: datetime | None = None
    firing: dict[str, AlertLevel] = Field(default_factory=dict)  # kind -> level, cleared by a success
    overdue_for: datetime | None = None  # the instant an overdue alert was raised for


class JobsState(BaseModel):
    jobs: dict[str, JobWatch] = Field(default_factory=dict)
    down: dict[str, str] = Field(default_factory=dict)  # service key -> alert level raised


async def load_groups(kv: KeyValue) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    try:
        keys = await kv.keys()
    except NoKeysError:
        return groups
    for key in keys:
        if not key.startswith("group."):
            continue
        raw = await _get(kv, key)
        if raw is None:
            continue
        try:
            groups[key] = Group.model_validate_json(raw)
        except ValidationError as exc:
            log.error("notifier: ignoring unreadable group %s: %s", key, exc)
    return groups


async def load_state(kv: KeyValue) -> JobsState:
    raw = await _get(kv, JOBS_KEY)
    if raw is None:
        return JobsState()
    try:
        return JobsState.model_validate_json(raw)
    except ValidationError as exc:
        log.error("notifier: starting with empty job state; the stored one is unreadable: %s", exc)
        return JobsState()


async def save_state(kv: KeyValue, state: JobsState) -> None:
    await kv.put(JOBS_KEY, state.model_dump_json().encode())


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
