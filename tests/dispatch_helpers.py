"""Helpers for the dispatch tests: the Dispatcher alone (no file detection: the tests publish
FileEvents themselves, as an upload tool would), a recording job, and publishing helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import Spawner, fetch, wait_for

from services.watcher.dispatch import Dispatcher, DispatchSettings
from shared import wire
from shared.bus import Bus, connect, publish_until_acked
from shared.catalog import Catalog
from shared.events import FileEvent
from shared.files import event_for
from shared.settings import ServiceSettings

# A real job: records its argv (as bytes, hex), its file/batch environment, the checksum of the
# file operand after `--`, and the batch manifest; optionally appends to the operand (so a
# symlink to a canary outside the root would show). Written atomically as <out>/<run id>.json.
RECORDER = r'''
import hashlib, json, os, sys
out, run_id, touch = sys.argv[1], sys.argv[2], sys.argv[3] == "touch"
args = sys.argv[4:]
rec = {"argv_hex": [os.fsencode(a).hex() for a in args],
       "env": {k: os.fsencode(v).hex() for k, v in os.environ.items()
               if k.startswith(("CROPCRON_FILE_", "CROPCRON_BATCH_"))}}
if "--" in args:  # the file operand is the last argument (a name may itself be "--")
    operand = args[-1]
    with open(operand, "rb") as f:
        rec["sha256"] = hashlib.sha256(f.read()).hexdigest()
    if touch:
        with open(operand, "ab") as f:
            f.write(b"processed\n")
manifest = os.environ.get("CROPCRON_BATCH_MANIFEST")
if manifest:
    with open(manifest, encoding="utf-8") as f:
        rec["manifest"] = json.load(f)
tmp = os.path.join(out, run_id + ".tmp")
with open(tmp, "w") as f:
    json.dump(rec, f)
os.replace(tmp, os.path.join(out, run_id + ".json"))
'''


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """(script, output dir)."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "receipts"
    out.mkdir(exist_ok=True)
    return script, out


def receipts(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


class RunningDispatcher:
    def __init__(self, dispatcher: Dispatcher, task: asyncio.Task[None], stop: asyncio.Event, bus: Bus,
                 catalog: Catalog) -> None:
        self.dispatcher, self.task, self.stop_event, self.bus, self.catalog = dispatcher, task, stop, bus, catalog

    async def stop(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 15)
        await self.catalog.stop()
        await self.bus.close()


async def start_dispatcher(nats_url: str, **overrides: Any) -> RunningDispatcher:
    bus = await connect(nats_url, "test-dispatcher")
    catalog = Catalog(bus.js)
    await catalog.start()
    conf = DispatchSettings(**{"batch_check": 0.2, "fetch_timeout": 0.5, "leader_ttl": 2.0, **overrides})
    dispatcher = Dispatcher(bus, catalog, ServiceSettings(nats_url=nats_url, instance="d1"),  # type: ignore[call-arg]
                            conf)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await asyncio.wait_for(dispatcher.ready.wait(), 30)
    return RunningDispatcher(dispatcher, task, stop, bus, catalog)


@contextlib.asynccontextmanager
async def dispatching(nats_url: str, **overrides: Any) -> AsyncIterator[RunningDispatcher]:
    running = await start_dispatcher(nats_url, **overrides)
    try:
        yield running
    finally:
        await running.stop()


def file_event(watch: str, root: Path, rel: bytes, source: str = "test") -> FileEvent:
    path = os.path.join(os.fsencode(root), rel)
    return event_for(watch, str(root), rel, os.lstat(path), source=source)


async def publish_events(bus: Bus, events: list[FileEvent]) -> None:
    items = [(wire.file_subject(e.watch), e.to_bytes(), e.id) for e in events]
    for start in range(0, len(items), 1000):
        assert not await publish_until_acked(bus, items[start:start + 1000], "test publish")


async def wait_runs(db: str, job: str, count: int, timeout: float, states: tuple[str, ...] = (
        "succeeded", "dead", "skipped")) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await fetch(db, "SELECT * FROM runs WHERE job = $1 AND state = ANY($2::text[])", job, list(states))
        return [dict(r) for r in rows] if len(rows) >= count else None

    result: list[dict[str, Any]] = await wait_for(check, timeout, f"{count} finished runs of {job}", every=0.25)
    return result


async def rejections(db: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await fetch(db, "SELECT * FROM rejections ORDER BY at")]


# -- a dispatcher as its own process (`cropcron serve dispatcher`), for the crash tests ------------
FAST_DISPATCH = {"dispatch_leader_ttl": 2, "dispatch_batch_check": 0.2, "dispatch_fetch_timeout": 0.5}


def spawn_dispatcher(spawn: Spawner, instance: str) -> Any:
    return spawn.start("dispatcher", instance=instance, **FAST_DISPATCH)


async def wait_quiescent(bus: Bus, timeout: float = 60) -> None:
    """Until every trigger is run and every run event is in history: the runner and history
    consumers have nothing undelivered and nothing unacked (the trigger stream is a work queue,
    so what was published cannot be counted afterwards; the runs table can, once this holds)."""
    consumers = [(wire.STREAM_TRIGGERS, wire.runner_consumer(band)) for band in wire.BANDS]
    consumers.append((wire.STREAM_RUNS, wire.HISTORY_CONSUMER))

    async def idle() -> bool:
        for stream, name in consumers:
            info = await bus.js.consumer_info(stream, name)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    await wait_for(idle, timeout, "runner and history idle")
