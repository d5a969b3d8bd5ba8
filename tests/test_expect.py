"""Data-completeness alarms on real servers (issue 14): history, the dispatcher, a runner and the
notifier in-process on a real nats-server and Postgres, aiosmtpd as the mail server. A flight of
300 files where 250 are expected closes quietly; one of 180 raises `incomplete_flight` by email; a
watch with no uploads by its deadline raises `no_uploads` once, resolved by its first file."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import System, wait_for
from dispatch_helpers import file_event, publish_events
from notify_helpers import apply_all, fast_notify, history_alerts, notifications
from peers_mail import MailServer

from shared import wire
from shared.bus import Bus
from shared.events import FileEvent
from shared.queries import FlightsQuery
from shared.reply import ask


def _farm_zone() -> str:
    """A zone where it is well inside the day now: `by: "00:00"` has passed, midnight is far."""
    return "UTC" if 2 <= datetime.now(UTC).hour <= 21 else "Asia/Seoul"


def _config(north: Path, south: Path) -> str:
    return f"""
system:
  timezone: {_farm_zone()}
folder_watches:
  - name: north
    path: "{north}"
  - name: south
    path: "{south}"
    expect: {{by: "00:00"}}
jobs:
  - name: 정사영상
    type: batch_detection
    on_batch: {{watch: north, group_by: folder, quiet: 1s, expect: {{by: "00:00", min_files: 250}}}}
    run: ["{{python}}", "-c", "pass"]
"""


def _flight(root: Path, folder: str, count: int) -> list[FileEvent]:
    (root / folder).mkdir(parents=True)
    for i in range(count):
        (root / folder / f"IMG_{i:04d}.jpg").write_bytes(os.urandom(32))
    return [file_event(root.name, root, f"{folder}/IMG_{i:04d}.jpg".encode()) for i in range(count)]


async def _flights(bus: Bus, n: int) -> list[dict[str, Any]] | None:
    import json

    answer = json.loads(await ask(bus.nc, wire.HISTORY_FLIGHTS, FlightsQuery(watch="north").model_dump_json().encode(),
                                  10))
    flights: list[dict[str, Any]] = answer["data"]["flights"]
    return flights if len(flights) >= n else None


async def test_short_flight_and_no_uploads_are_emailed_once_and_resolved_by_data(
        system: System, bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    north, south = tmp_path / "north", tmp_path / "south"
    south.mkdir()
    with MailServer() as mail:
        await apply_all(bus, _config(north, south), notifications(mail.port, slack=False))
        await system.start("history", "runner", "dispatcher")
        await publish_events(bus, _flight(north, "full", 300) + _flight(north, "short", 180))
        flights = await wait_for(lambda: _flights(bus, 2), 60, "both flights closed and in history")
        assert sorted(f["files"] for f in flights) == [180, 300]
        await system.start("notifier")

        def subjects() -> list[str]:
            return [m.subject() for m in mail.handler.delivered()]

        async def two_mails() -> list[str] | None:
            return subjects() if len(subjects()) >= 2 else None

        await wait_for(two_mails, 60, "the incomplete_flight and no_uploads emails")
        await asyncio.sleep(3)  # six more checks: nothing is raised again
        got = subjects()
        assert len(got) == 2, got
        short = next(m for m in mail.handler.delivered() if "incomplete_flight" in m.text())
        assert "north/short has 180 of 250 expected files" in short.subject(), short.subject()
        assert "정사영상" in short.text()
        none = next(m for m in mail.handler.delivered() if "no_uploads" in m.text())
        assert "south: no uploads by 00:00 (0 of 1 flight(s)" in none.subject(), none.subject()
        kinds = sorted(a["kind"] for a in await history_alerts(bus) if not a["resolved"])
        assert kinds == ["incomplete_flight", "no_uploads"], "the 300-file flight raised nothing"

        (south / "first.jpg").write_bytes(b"field")
        await publish_events(bus, [file_event("south", south, b"first.jpg")])

        async def resolved() -> list[str] | None:
            found = [s for s in subjects() if "RESOLVED" in s]
            return found or None

        found = await wait_for(resolved, 30, "the no_uploads alarm resolved by the first file")
        assert "south: uploads arrived (1 of 1 flight(s)" in found[0], found
