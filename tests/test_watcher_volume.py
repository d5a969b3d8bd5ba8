"""The issue's volume cases, end to end on real inotify, NATS and Postgres: a slow 200 MB upload
is announced once, after its last write, and the job reads the whole file; 5,000 files dropped
within seconds become exactly 5,000 events and 5,000 runs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import System, apply_yaml, fetch, wait_for
from watch_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    Collector,
    collector_fixture,
    wait_live,
    watcher_env_fixture,
)

from shared.bus import Bus

CHECKSUM_JOB = r'''
import hashlib, os, sys
out, run_id = sys.argv[1], sys.argv[2]
operand = sys.argv[sys.argv.index("--") + 1]
with open(operand, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
with open(os.path.join(out, run_id + ".tmp"), "w") as f:
    f.write(digest)
os.replace(os.path.join(out, run_id + ".tmp"), os.path.join(out, run_id + ".sha256"))
'''


def _config(root: Path, jobs: str) -> str:
    return f"""
folder_watches:
  - name: uploads
    path: "{root}"
    settle: 2s
    rescan_interval: 3s
jobs:
{jobs}"""


def _slow_write(path: Path, chunks: int, chunk: int, period: float, done: dict[str, object]) -> None:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(chunks):
            data = os.urandom(chunk)
            digest.update(data)
            f.write(data)
            f.flush()  # each chunk reaches the file (and its size) at once, as a network upload would
            done["last_write"] = time.time()
            if i + 1 < chunks:
                time.sleep(period)
    done["sha256"] = digest.hexdigest()


@pytest.mark.timeout(600)
async def test_slow_200mb_upload_one_event_after_last_write_job_sees_full_file(
        system: System, bus: Bus, db_url: str, collector: Collector, watcher_env: dict[str, str],
        tmp_path: Path) -> None:
    root, out = tmp_path / "uploads", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    script = tmp_path / "checksum.py"
    script.write_text(CHECKSUM_JOB)
    await apply_yaml(bus, _config(root, f"""
  - name: checksum
    type: image_processing
    on_file: uploads
    max_retries: 0
    run: ["{sys.executable}", "{script}", "{out}", "{{run_id}}", "--", "{{file.path}}"]
"""))
    await system.start("history", "runner", "watcher")
    done: dict[str, object] = {}
    # 200 MB in 1 MB chunks over 20 s, plus 50 small files at once while it is being written
    writer = threading.Thread(target=_slow_write, args=(root / "flight.mp4", 200, 1 << 20, 0.1, done))
    writer.start()
    for i in range(50):
        (root / f"small{i}.jpg").write_bytes(os.urandom(1000))
    await asyncio.to_thread(writer.join, 60)
    assert not writer.is_alive()

    await collector.wait_events(51, timeout=120)
    await asyncio.sleep(6)  # two more rescans: nothing else may be announced
    big = [e for e in collector.events if e.rel_path == "flight.mp4"]
    assert len(big) == 1, [(e.size, e.detected_at) for e in big]
    assert len(collector.events) == 51, collector.counts()
    assert big[0].size == 200 << 20 and big[0].sha256 == done["sha256"]
    assert collector.received_at[big[0].id] >= float(done["last_write"])  # type: ignore[arg-type]

    rows = await wait_for(lambda: _finished(db_url, "checksum", 51), 180, "51 checksum runs")
    assert {r["state"] for r in rows} == {"succeeded"}, rows
    big_runs = [r for r in rows if (out / f"{r['run_id']}.sha256").read_text() == done["sha256"]]
    assert len(big_runs) == 1  # the job read the whole file: its checksum is the writer's


@pytest.mark.timeout(900)  # 5,000 job processes on a 2-core machine shared with other test runs
async def test_5000_files_in_seconds_exactly_5000_events_and_runs(
        system: System, bus: Bus, db_url: str, collector: Collector, watcher_env: dict[str, str],
        tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    await apply_yaml(bus, _config(root, """
  - name: touch
    type: image_processing
    on_file: uploads
    max_retries: 0
    run: ["/bin/true", "--", "{file.path}"]
"""))
    await system.start("history", "runner", "watcher")
    await wait_live(bus, "uploads")
    started = time.monotonic()
    for d in range(10):  # ten flight folders, created while the watcher runs
        folder = root / f"flight{d}"
        folder.mkdir()
        for i in range(500):
            (folder / f"IMG_{i:04d}.jpg").write_bytes(b"%d-%d" % (d, i))
    dropped_in = time.monotonic() - started
    await collector.wait_events(5000, timeout=120)
    await asyncio.sleep(6)  # two rescans later: still exactly one event per file
    counts = collector.counts()
    assert len(collector.events) == 5000 and len(counts) == 5000, (len(collector.events), len(counts))
    assert dropped_in < 30, dropped_in

    rows = await wait_for(lambda: _finished(db_url, "touch", 5000), 600, "5000 runs", every=1)
    assert len(rows) == 5000 and len({r["run_id"] for r in rows}) == 5000
    assert {r["state"] for r in rows} == {"succeeded"}


async def _finished(db: str, job: str, n: int) -> list[dict[str, object]] | None:
    rows = await fetch(db, "SELECT run_id, state FROM runs WHERE job = $1 AND state IN "
                           "('succeeded', 'dead', 'skipped')", job)
    return [dict(r) for r in rows] if len(rows) >= n else None
