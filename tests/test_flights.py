"""Uploads in history (issue 14): every arrival, every closed flight with its files and its batch
run, the file of each file run, and the files the watcher refused, on real NATS, Postgres, a real
watcher on a real folder, the dispatcher and a runner."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import System, apply_yaml, wait_for
from dispatch_helpers import wait_runs
from watch_helpers import write_file

from shared import wire
from shared.bus import Bus
from shared.queries import FilesHourlyQuery, FlightsQuery, RefusedQuery, RunsQuery, UploadsQuery
from shared.reply import ask


def _config(root: Path) -> str:
    return f"""
folder_watches:
  - name: 북쪽 밭
    path: "{root}"
    extensions: [.jpg]
jobs:
  - name: 정사영상
    type: batch_detection
    on_batch: {{watch: 북쪽 밭, group_by: folder, quiet: 1s}}
    run: ["{{python}}", "-c", "pass"]
  - name: checksum
    type: image_processing
    on_file: 북쪽 밭
    run: ["{{python}}", "-c", "pass"]
"""


async def _ask(bus: Bus, subject: str, query: Any) -> Any:
    answer = json.loads(await ask(bus.nc, subject, query.model_dump_json().encode(), 10))
    assert answer["ok"], answer
    return answer["data"]


async def test_a_flight_its_files_its_run_and_the_refused_files_are_in_history(
        system: System, bus: Bus, db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "north"
    (root / "flight_1").mkdir(parents=True)
    await apply_yaml(bus, _config(root))
    before = datetime.now(UTC)
    await system.start("history", "runner", "watcher")
    sizes = {}
    for i in range(120):
        data = os.urandom(100 + i)
        write_file(root / "flight_1" / f"IMG_{i:04d}.jpg", data)
        sizes[f"flight_1/IMG_{i:04d}.jpg"] = len(data)
    write_file(root / "flight_1" / "empty.jpg", b"")  # zero bytes: refused (the default policy)
    os.symlink("/etc/hostname", root / "flight_1" / "link.jpg")  # a symlink: refused

    async def one_flight() -> dict[str, Any] | None:
        found = await _ask(bus, wire.HISTORY_FLIGHTS, FlightsQuery(watch="북쪽 밭"))
        flights = found["flights"]
        return flights[0] if flights and flights[0]["run_state"] == "succeeded" else None

    flight = await wait_for(one_flight, 60, "the flight closed and its batch run succeeded")
    assert (flight["job"], flight["watch"], flight["folder"]) == ("정사영상", "북쪽 밭", "flight_1")
    assert flight["files"] == 120 and flight["bytes"] == sum(sizes.values())
    assert flight["state"] == "closed" and flight["partial"] is False and flight["reason"] == "quiet"
    assert flight["first_arrival"] <= flight["last_arrival"], flight

    # one flight, its files paged in arrival order
    page = await _ask(bus, wire.HISTORY_FLIGHTS, FlightsQuery(id=flight["id"], limit=50, offset=100))
    assert page["total_files"] == 120 and [f["position"] for f in page["files"]] == list(range(100, 120))
    assert all(sizes[f["rel_path"]] == f["size"] and f["detected_at"] for f in page["files"])

    # each file run carries its file
    await wait_runs(db_url, "checksum", 120, 60)
    runs = await _ask(bus, wire.HISTORY_RUNS, RunsQuery(job="checksum", limit=200))
    assert {(r["file_path"], r["file_size"]) for r in runs} == set(sizes.items())
    assert {r["file_watch"] for r in runs} == {"북쪽 밭"}

    async def refused() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = await _ask(bus, wire.HISTORY_REFUSED, RefusedQuery(watch="북쪽 밭"))
        return rows if len(rows) >= 2 else None

    rows = {r["path"]: r for r in await wait_for(refused, 30, "the two refused files listed")}
    assert set(rows) == {"flight_1/empty.jpg", "flight_1/link.jpg"}
    assert "zero bytes" in rows["flight_1/empty.jpg"]["reason"]
    assert "symbolic link" in rows["flight_1/link.jpg"]["reason"]
    assert {r["watch"] for r in rows.values()} == {"북쪽 밭"}

    uploads = await _ask(bus, wire.HISTORY_REPORT_UPLOADS, UploadsQuery(
        watches=["북쪽 밭", "nowhere"], since=before, until=datetime.now(UTC) + timedelta(seconds=1)))
    assert uploads["북쪽 밭"]["files"] == 120 and uploads["북쪽 밭"]["unbatched"] == 0
    assert [f["id"] for f in uploads["북쪽 밭"]["flights"]] == [flight["id"]]
    assert uploads["nowhere"] == {"files": 0, "last_file_at": None, "unbatched": 0, "flights": []}

    hourly = await _ask(bus, wire.HISTORY_REPORT_FILES, FilesHourlyQuery(days=1))
    assert sum(hourly["series"]["북쪽 밭"]) == 120 and len(hourly["hours"]) >= 24


async def test_bad_upload_queries_are_named(system: System, bus: Bus) -> None:
    await system.start("history")
    for subject, body, words in ((wire.HISTORY_FLIGHTS, b'{"limit": 0}', "limit"),
                                 (wire.HISTORY_REPORT_UPLOADS, b'{"watches": []}', "watches"),
                                 (wire.HISTORY_REFUSED, b'{"colour": "red"}', "colour")):
        answer = json.loads(await ask(bus.nc, subject, body, 10))
        assert answer["ok"] is False and words in answer["error"], answer
