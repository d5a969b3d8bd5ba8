"""Shared set-up for the notifier tests: fast knobs, a config with an aiosmtpd email channel and
a local Slack webhook, alerts and run events published straight onto the bus."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from conftest import ROOT

from cropcron import cli_alerts, commands
from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.config import parse_config
from shared.events import Alert, RunEvent, RunState

FAST_NOTIFY = {
    "CROPCRON_NOTIFY_TICK": "0.2",
    "CROPCRON_NOTIFY_RETRY_BASE": "0.3",
    "CROPCRON_NOTIFY_RETRY_MAX": "2",
    "CROPCRON_NOTIFY_ACK_WAIT": "3",
    "CROPCRON_DEADMAN_INTERVAL": "0.5",
    "CROPCRON_DASHBOARD_URL": "http://127.0.0.1:8080",
}


def fast_notify(monkeypatch: pytest.MonkeyPatch, **extra: str) -> dict[str, str]:
    env = {**FAST_NOTIFY, **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def notifications(smtp_port: int | None = None, slack: bool = True, rules: list[dict[str, Any]] | None = None,
                  email_extra: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    channels: dict[str, Any] = {"log": {"type": "log"}}
    if smtp_port is not None:
        channels["mail"] = {"type": "email", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                            "from": "cropcron@farm.example", "to": ["ops@farm.example"], "timeout": 5,
                            **(email_extra or {})}
    if slack:
        channels["slack"] = {"type": "slack", "webhook_url_env": "TEST_SLACK_WEBHOOK", "timeout": 5}
    return {"group_window": "1s", "group_interval": "2s", "repeat_interval": "1h", "channels": channels,
            "rules": rules or [{"name": "all", "channels": [c for c in channels if c != "log"] or ["log"]}], **top}


async def apply_all(bus: Bus, jobs_yaml: str, notify: dict[str, Any]) -> None:
    raw = yaml.safe_load(jobs_yaml) or {}
    raw["notifications"] = notify
    config = parse_config(raw)
    await commands.apply(bus, config, ROOT)
    await cli_alerts.apply_notifications(bus, config)


def run_event(job: str, run_id: str, state: RunState, attempt: int = 1, **fields: Any) -> RunEvent:
    return RunEvent(run_id=run_id, job=job, job_type="image_processing", state=state, attempt=attempt,
                    at=datetime.now(UTC), **fields)


async def publish_events(bus: Bus, events: list[RunEvent]) -> None:
    items = [(wire.run_event_subject(e.job, e.state.value), e.to_bytes(), e.msg_id()) for e in events]
    assert not await publish_until_acked(bus, items, "test")


async def raise_alert(bus: Bus, alert: Alert) -> None:
    await bus.js.publish(wire.alert_subject(alert.level, alert.kind), alert.to_bytes(),
                         headers={wire.HEADER_MSG_ID: alert.id})


async def history_alerts(bus: Bus, **query: Any) -> list[dict[str, Any]]:
    from shared.queries import AlertsQuery

    try:
        rows: list[dict[str, Any]] = await commands.request(bus, wire.HISTORY_ALERTS, AlertsQuery(**query), timeout=5)
    except commands.CommandError:
        return []
    return rows


def slack_kinds(bodies: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(b) for b in bodies]
