"""Dispatch under faults, with every service a separate process (conftest `spawn`) and the real
detector: `cropcron serve watcher` is killed with SIGKILL in the middle of a flight and started
again; the flight still makes exactly one batch run with all its files."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from conftest import Spawner, apply_yaml, fetch, wait_for, wait_service
from dispatch_helpers import receipts, recorder

from shared import wire
from shared.bus import Bus
from shared.kv_read import bucket_keys


def _write(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).write_bytes(os.urandom(256))


async def test_watcher_killed_mid_flight_then_restarted_makes_one_batch_with_every_file(
        spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "drone"
    (root / "flight_7").mkdir(parents=True)
    script, out = recorder(tmp_path)
    await apply_yaml(bus, f"""
folder_watches:
  - {{name: drone, path: "{root}", settle: 2s, rescan_interval: 3s}}
jobs:
  - name: mosaic
    type: batch_detection
    on_batch: {{watch: drone, quiet: 20s}}
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "{{batch.count}}", "{{batch.manifest}}"]
  - name: per_image
    type: image_processing
    on_file: drone
    concurrency: 4
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "--", "{{file.path}}"]
""")
    spawn.start("runner", "history", concurrency=8)
    watcher_env = {"watcher_state_dir": tmp_path / "watcher-state", "watcher_root_retry": 0.3,
                   "watcher_settle_check": 0.2, "dispatch_batch_check": 0.2, "dispatch_leader_ttl": 2}
    first = spawn.start("watcher", **watcher_env)
    await wait_service(bus, "dispatcher", first.instance, 60)  # type: ignore[attr-defined]
    names = [f"flight_7/IMG_{i:04d}.jpg" for i in range(200)]
    _write(root, names[:100])

    async def recorded() -> bool:
        return len(await bucket_keys(bus.js, wire.KV_BATCHES)) >= 101  # the header and 100 files

    await wait_for(recorded, 60, "100 files in the open batch")
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    _write(root, names[100:])  # arrive while nothing watches
    second = spawn.start("watcher", **watcher_env)
    await wait_service(bus, "dispatcher", second.instance, 60)  # type: ignore[attr-defined]

    async def batch_done() -> list[dict] | None:
        found = [r for r in receipts(out).values() if "manifest" in r]
        return found or None

    [receipt] = await wait_for(batch_done, 120, "the flight's batch run", every=0.5)
    manifest = receipt["manifest"]
    assert sorted(f["rel_path"] for f in manifest["files"]) == names, "all 200 files, none twice"
    assert manifest["count"] == 200 and manifest["reason"] == "quiet" and not manifest["partial"]

    async def all_files_ran() -> list | None:
        rows = await fetch(db_url, "SELECT state FROM runs WHERE job = 'per_image'")
        return rows if len(rows) >= 200 else None

    rows = await wait_for(all_files_ran, 180, "200 per-file runs", every=1)
    assert {r["state"] for r in rows} == {"succeeded"}
    await asyncio.sleep(3)
    runs = await fetch(db_url, "SELECT job, count(*) AS n FROM runs GROUP BY job ORDER BY job")
    assert [(r["job"], r["n"]) for r in runs] == [("mosaic", 1), ("per_image", 200)]
