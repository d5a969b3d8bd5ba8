"""Flight batches on real NATS, Postgres and files: one run per flight, with exactly its files,
whatever closes it (quiet, manifest file, expected count, max_wait -> partial), across a
dispatcher crash."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from conftest import Spawner, System, apply_yaml, fetch, wait_for, wait_service
from dispatch_helpers import (
    dispatching,
    file_event,
    publish_events,
    receipts,
    recorder,
    spawn_dispatcher,
    wait_quiescent,
    wait_runs,
)

from shared import wire
from shared.bus import Bus
from shared.events import FileEvent, batch_id
from shared.kv_read import bucket_keys


def _config(root: Path, script: Path, out: Path, rule: str) -> str:
    return f"""
folder_watches:
  - name: drone
    path: "{root}"
jobs:
  - name: mosaic
    type: batch_detection
    on_batch: {{watch: drone, {rule}}}
    max_retries: 0
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "{{batch.id}}", "{{batch.count}}",
          "{{batch.partial}}", "{{batch.folder}}", "{{batch.manifest}}"]
"""


def _files(root: Path, folder: str, count: int, prefix: str = "IMG_") -> list[FileEvent]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    events = []
    for i in range(count):
        rel = f"{folder}/{prefix}{i:04d}.jpg" if folder else f"{prefix}{i:04d}.jpg"
        (root / rel).write_bytes(os.urandom(64))
        events.append(file_event("drone", root, rel.encode()))
    return events


def _interleaved_flights(root: Path, names: tuple[str, ...], count: int,
                         ) -> tuple[dict[str, list[FileEvent]], list[FileEvent]]:
    """`count` files in each flight folder, and their events as several drones upload at once:
    one file of each flight in turn."""
    flights = {name: _files(root, name, count) for name in names}
    return flights, [e for group in zip(*flights.values(), strict=True) for e in group]


def _all_closed(status: dict[str, Any]) -> bool:
    """A dispatcher's heartbeat: active, no open batch, and no longer catching up."""
    return bool(status["role"] == "active" and status["open_batches"] == 0 and not status["catching_up"])


def _argv(receipt: dict[str, Any]) -> list[str]:
    return [bytes.fromhex(a).decode() for a in receipt["argv_hex"]]


async def _receipts(out: Path, n: int) -> dict[str, dict[str, Any]]:
    async def check() -> dict[str, dict[str, Any]] | None:
        found = receipts(out)
        return found if len(found) >= n else None

    result: dict[str, dict[str, Any]] = await wait_for(check, 60, f"{n} batch runs to record")
    return result


async def test_three_interleaved_flights_make_three_batches_each_with_exactly_its_files(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "drone"
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out, "group_by: folder, quiet: 3s"))
    await system.start("history", "runner")
    flights, interleaved = _interleaved_flights(root, ("flight_A", "flight_B", "flight_C"), 300)
    async with dispatching(nats_server.url) as running:
        for start in range(0, len(interleaved), 90):  # an upload over a few seconds, three drones at once
            await publish_events(bus, interleaved[start:start + 90])
            await asyncio.sleep(0.1)
        runs = await wait_runs(db_url, "mosaic", 3, 90)
        assert {r["state"] for r in runs} == {"succeeded"}, runs
        found = await _receipts(out, 3)
        await asyncio.sleep(4)  # a fourth batch would have closed by now
        assert len(await fetch(db_url, "SELECT run_id FROM runs WHERE job = 'mosaic'")) == 3
        assert running.dispatcher.keeper.open == {}
    by_folder = {}
    for run_id, receipt in found.items():
        manifest = receipt["manifest"]
        by_folder[manifest["folder"]] = manifest
        assert manifest["batch_id"] == run_id == batch_id("mosaic", flights[manifest["folder"]][0].id)
        assert _argv(receipt)[:4] == [run_id, "300", "false", manifest["folder"]]
        assert manifest["reason"] == "quiet" and manifest["partial"] is False and manifest["refused"] == []
        assert manifest["root"] == str(root)
    assert set(by_folder) == set(flights)
    for name, events in flights.items():
        files = by_folder[name]["files"]
        assert [f["id"] for f in files] == [e.id for e in events], f"{name}: exactly its files, in arrival order"
        assert all(f["path"] == os.path.join(root.resolve(), f["rel_path"]) for f in files)


async def test_manifest_file_and_expected_count_close_a_batch_at_once(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "drone"
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out, "quiet: 10m, manifest: '*.done', expected_count: 50"))
    await system.start("history", "runner")
    with_marker = _files(root, "f1", 7)
    (root / "f1" / "flight.done").write_text("7 images\n")
    marker = file_event("drone", root, b"f1/flight.done")
    counted = _files(root, "f2", 50)
    async with dispatching(nats_server.url):
        await publish_events(bus, [*with_marker, marker, *counted])
        found = await _receipts(out, 2)
    manifests = {r["manifest"]["folder"]: r["manifest"] for r in found.values()}
    assert manifests["f1"]["reason"] == "manifest" and manifests["f1"]["count"] == 8
    assert manifests["f2"]["reason"] == "count" and manifests["f2"]["count"] == 50
    assert not any(m["partial"] for m in manifests.values())


async def test_max_wait_closes_a_still_growing_batch_as_partial_and_gap_grouping_splits_on_quiet(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "drone"
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out, "group_by: gap, quiet: 1200ms, max_wait: 2500ms"))
    await system.start("history", "runner")
    trickle = _files(root, "slow", 10)
    async with dispatching(nats_server.url):
        for event in trickle:  # one file every 0.4 s: never quiet for 1.2 s, so max_wait ends it
            await publish_events(bus, [event])
            await asyncio.sleep(0.4)
        found = await _receipts(out, 2)  # the partial batch, then the rest after a quiet gap
        await asyncio.sleep(3)
        found = receipts(out)
    manifests = sorted((r["manifest"] for r in found.values()), key=lambda m: m["opened_at"])
    assert manifests[0]["reason"] == "max_wait" and manifests[0]["partial"] is True
    assert manifests[-1]["reason"] == "quiet" and manifests[-1]["partial"] is False
    got = [f["id"] for m in manifests for f in m["files"]]
    assert got == [e.id for e in trickle], "every file in exactly one batch, none twice"
    assert all(m["folder"] == "" for m in manifests)


async def test_open_batch_survives_a_dispatcher_crash_neither_lost_nor_duplicated(
        system: System, spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "drone"
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out, "quiet: 3s"))
    await system.start("history", "runner")
    events = _files(root, "flight", 200)
    first = spawn_dispatcher(spawn, "d1")
    await wait_service(bus, "dispatcher", "d1", what="active", check=lambda s: s["role"] == "active")
    await publish_events(bus, events[:100])

    async def recorded() -> bool:
        return len(await bucket_keys(bus.js, wire.KV_BATCHES)) >= 101  # the header and 100 files

    await wait_for(recorded, 30, "100 files recorded in the open batch")
    first.kill()  # SIGKILL: no shutdown path runs, the lease is not released, it expires
    first.wait(10)
    await publish_events(bus, events[100:])
    # an outage longer than quiet (3 s): by the clock the open batch is quiet when the next
    # dispatcher loads it, yet the rest of the flight is queued in the stream and must join it
    await asyncio.sleep(4)
    spawn_dispatcher(spawn, "d2")
    await _receipts(out, 1)
    await wait_service(bus, "dispatcher", "d2", what="every batch closed, caught up", check=_all_closed)
    await wait_quiescent(bus)
    found = receipts(out)
    assert len(found) == 1, "one batch run, not a second for a late part"
    manifest = next(iter(found.values()))["manifest"]
    assert [f["id"] for f in manifest["files"]] == [e.id for e in events]
    assert manifest["batch_id"] == batch_id("mosaic", events[0].id)
    assert len(await fetch(db_url, "SELECT run_id FROM runs WHERE job = 'mosaic'")) == 1
    info = await bus.js.stream_info(wire.KV_BATCHES_STREAM, subjects_filter=f"$KV.{wire.KV_BATCHES}.>")
    left = [s for s in (info.state.subjects or {}) if not s.endswith("." + wire.DISPATCH_LEADER_KEY)]
    assert left == [] and info.state.messages <= 1, "the closed batch is purged (only the lease is left)"


async def test_a_standby_dispatcher_takes_over_a_crashed_ones_open_batches(
        system: System, spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    """The active dispatcher is killed -9 with 150 files in its open batches, some perhaps not yet
    recorded in KV nor acked (those come back after ack_wait): the standby takes over, catches up
    before closing anything for quiet, and each flight is still one run with exactly its files."""
    root = tmp_path / "drone"
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out, "quiet: 4s"))
    await system.start("history", "runner")
    flights, interleaved = _interleaved_flights(root, ("north", "south", "east"), 100)
    procs = {name: spawn_dispatcher(spawn, name) for name in ("d1", "d2")}
    roles = {name: (await wait_service(bus, "dispatcher", name, what="running",
                                       check=lambda s: s["role"] in ("active", "standby")))["role"]
             for name in procs}
    assert sorted(roles.values()) == ["active", "standby"], roles
    active = next(name for name, role in roles.items() if role == "active")
    standby = next(name for name in procs if name != active)
    await publish_events(bus, interleaved[:150])
    await wait_service(bus, "dispatcher", active, what="150 files in open batches",
                       check=lambda s: s["open_files"] >= 150)
    procs[active].kill()
    procs[active].wait(10)
    await publish_events(bus, interleaved[150:])
    found = await _receipts(out, 3)
    await wait_service(bus, "dispatcher", standby, what="took over, every batch closed, caught up",
                       check=_all_closed)
    await wait_quiescent(bus)
    assert len(receipts(out)) == 3, "no flight split between the two dispatchers"
    for receipt in found.values():
        manifest = receipt["manifest"]
        ids = [f["id"] for f in manifest["files"]]
        # in arrival order at the dispatchers: a redelivered file may come after later ones
        assert len(ids) == len(set(ids)) and set(ids) == {e.id for e in flights[manifest["folder"]]}
    assert len(await fetch(db_url, "SELECT run_id FROM runs WHERE job = 'mosaic'")) == 3


