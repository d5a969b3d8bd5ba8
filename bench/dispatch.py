"""The dispatcher's figures (issue 3): FileEvents -> triggers, beside a naive pattern measured in
the same run.

    python bench/dispatch.py                  # 10,000 events; 10,000 files in 10 interleaved flights
    python bench/dispatch.py --events 2000 --flights 5 --files 2000
    python bench/dispatch.py --sync 1s        # the broker fsyncing once a second instead of per message

A private nats-server on a free loopback port; the Dispatcher runs in this process on its own
connection. Events are synthetic FileEvents (the dispatcher never opens files), published into
CROPCRON_FILES before the dispatcher starts, so the figure is the dispatcher's own drain rate.

Figures (printed, never asserted):
- on_file: events/s from dispatcher start until the `dispatch` consumer has nothing pending or
  unacknowledged; triggers stored (must equal the events: lost = 0); CPU seconds of this process;
- naive: the same events, one at a time: fetch 1, publish the trigger and wait for its PubAck,
  ack (what a callback-per-event consumer does); events/s and the ratio;
- batches: files of several flights interleaved, one on_batch job (quiet 3 s): files/s until every
  flight's batch trigger is stored (quiet subtracted), batch runs (must equal flights), files in
  them (must equal the files), KV records left after closing (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import CHILDREN_TIMEOUT, Children, exit_on_signals, fmt, log, print_table  # noqa: F401

from cropcron import commands  # noqa: E402
from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config  # noqa: E402
from shared import wire  # noqa: E402
from shared.bus import Bus, connect, publish_until_acked  # noqa: E402
from shared.catalog import Catalog  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.events import FileEvent, Trigger, file_event_id, file_run_id  # noqa: E402
from shared.settings import ServiceSettings  # noqa: E402
from shared.topology import ensure_topology  # noqa: E402

CHILDREN = Children()


def events(watch: str, rels: list[str]) -> list[FileEvent]:
    now = datetime.now(UTC)
    return [FileEvent(id=file_event_id(watch, rel.encode(), 1000 + i, 1_700_000_000_000_000_000 + i), watch=watch,
                      path=f"/srv/{watch}/{rel}", rel_path=rel, size=1000 + i,
                      mtime_ns=1_700_000_000_000_000_000 + i, detected_at=now, source="bench") for i, rel in
            enumerate(rels)]


async def publish(bus: Bus, evs: list[FileEvent]) -> None:
    items = [(wire.file_subject(e.watch), e.to_bytes(), e.id) for e in evs]
    for start in range(0, len(items), 2000):
        assert not await publish_until_acked(bus, items[start:start + 2000], "bench publish")


async def drained(bus: Bus, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await bus.js.consumer_info(wire.STREAM_FILES, wire.DISPATCH_CONSUMER)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError("dispatch consumer not drained")


async def triggers_stored(bus: Bus) -> int:
    return (await bus.js.stream_info(wire.STREAM_TRIGGERS)).state.messages


async def run_dispatcher(url: str, batch_check: float = 0.2) -> tuple[Any, asyncio.Task[None], asyncio.Event, Bus,
                                                                      Catalog]:
    from services.watcher.dispatch import Dispatcher, DispatchSettings

    bus = await connect(url, "bench-dispatcher")
    catalog = Catalog(bus.js)
    await catalog.start()
    dispatcher = Dispatcher(bus, catalog, ServiceSettings(nats_url=url),  # type: ignore[call-arg]
                            DispatchSettings(batch_check=batch_check))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await dispatcher.ready.wait()
    return dispatcher, task, stop, bus, catalog


async def stop_dispatcher(handle: tuple[Any, asyncio.Task[None], asyncio.Event, Bus, Catalog]) -> None:
    _, task, stop, bus, catalog = handle
    stop.set()
    await asyncio.wait_for(task, 30)
    await catalog.stop()
    await bus.close()


async def on_file(bus: Bus, url: str, n: int) -> dict[str, Any]:
    await publish(bus, events("frames", [f"f{i // 500}/IMG_{i:06d}.jpg" for i in range(n)]))
    before = await triggers_stored(bus)
    cpu = time.process_time()
    start = time.monotonic()
    handle = await run_dispatcher(url)
    end = await drained(bus, 600)
    cpu = time.process_time() - cpu
    await stop_dispatcher(handle)
    stored = await triggers_stored(bus) - before
    return {"events": n, "seconds": end - start, "events_per_s": n / (end - start), "triggers": stored,
            "lost": n - stored, "cpu_s": cpu}


async def naive(bus: Bus, n: int) -> dict[str, Any]:
    """One at a time, waiting for each PubAck: fetch 1 -> publish -> ack."""
    evs = events("naive", [f"n/IMG_{i:06d}.jpg" for i in range(n)])
    await publish(bus, evs)
    psub = await bus.js.pull_subscribe_bind(durable=wire.DISPATCH_CONSUMER, stream=wire.STREAM_FILES)
    start = time.monotonic()
    done = 0
    while done < n:
        [msg] = await psub.fetch(1, timeout=5)
        event = FileEvent.model_validate_json(msg.data)
        run_id = file_run_id("naive_job", event.id)
        trigger = Trigger(run_id=run_id, job="naive_job", kind="file", created_at=datetime.now(UTC),
                          data=event.model_dump(mode="json", exclude_none=True))
        await bus.js.publish(wire.trigger_subject("normal", "naive_job"), trigger.to_bytes(),
                             headers={wire.HEADER_MSG_ID: run_id})
        await msg.ack()
        done += 1
    seconds = time.monotonic() - start
    await psub.unsubscribe()
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds}


async def batches(bus: Bus, url: str, flights: int, files: int) -> dict[str, Any]:
    per = files // flights
    rels = [f"flight_{f:02d}/IMG_{i:05d}.jpg" for i in range(per) for f in range(flights)]  # interleaved
    evs = events("drone", rels)
    await publish(bus, evs)
    before = await triggers_stored(bus)
    first_seq = (await bus.js.stream_info(wire.STREAM_TRIGGERS)).state.last_seq + 1
    start = time.monotonic()
    handle = await run_dispatcher(url)
    deadline = time.monotonic() + 600
    while await triggers_stored(bus) - before < flights and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - start - 3.0  # the quiet period is waiting, not work
    await asyncio.sleep(4)  # a split flight would close a further batch meanwhile
    in_batches = got = 0
    last = (await bus.js.stream_info(wire.STREAM_TRIGGERS)).state.last_seq
    for seq in range(first_seq, last + 1):  # read in place: the triggers stream is a work queue
        msg = await bus.js.get_msg(wire.STREAM_TRIGGERS, seq)
        if msg.subject == wire.trigger_subject("normal", "flight_job"):
            in_batches += len(json.loads(msg.data or b"{}")["data"]["batch"]["files"])
            got += 1
    left = (await bus.js.stream_info(wire.KV_BATCHES_STREAM)).state.messages
    await stop_dispatcher(handle)
    return {"files": len(evs), "flights": flights, "seconds": seconds, "files_per_s": len(evs) / seconds,
            "batch_runs": got, "files_in_batches": in_batches, "kv_left": left}


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cropcron-bench-dispatch-"))
    port = free_port()
    conf = workdir / "nats.conf"
    write_nats_config(workdir / "js", port, conf, sync=args.sync)
    proc = CHILDREN.spawn([nats_server_binary(), "-c", str(conf)])
    wait_port(port, time.monotonic() + 15, proc)
    url = f"nats://127.0.0.1:{port}"
    bus = await connect(url, "bench")
    try:
        await ensure_topology(bus.js)
        config = parse_config({
            "folder_watches": [{"name": n, "path": f"/srv/{n}"} for n in ("frames", "naive", "drone")],
            "jobs": [{"name": "frames_job", "type": "image_processing", "on_file": "frames", "run": ["true"]},
                     {"name": "flight_job", "type": "batch_detection", "run": ["true"],
                      "on_batch": {"watch": "drone", "quiet": "3s"}}]})
        await commands.apply(bus, config, workdir)
        log(f"on_file: {args.events} events")
        a = await on_file(bus, url, args.events)
        log(f"naive: {args.naive} events")
        b = await naive(bus, args.naive)
        log(f"batches: {args.files} files in {args.flights} flights")
        c = await batches(bus, url, args.flights, args.files)
    finally:
        await bus.close()
        CHILDREN.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(["measure", "cropcron dispatcher", "naive (one PubAck per event)", "ratio"], [
        ["events/s (on_file)", fmt(a["events_per_s"], 0), fmt(b["events_per_s"], 0),
         fmt(a["events_per_s"] / b["events_per_s"], 1) + "x"],
        ["events", fmt(a["events"]), fmt(b["events"]), ""],
        ["triggers stored / lost", f"{a['triggers']:,} / {a['lost']}", "", ""],
        ["CPU s (dispatcher process)", fmt(a["cpu_s"], 2), "", ""],
    ])
    print_table(["flight batches", "value"], [
        ["files / flights (interleaved)", f"{c['files']:,} / {c['flights']}"],
        ["files/s (quiet period excluded)", fmt(c["files_per_s"], 0)],
        ["batch runs (must equal flights)", c["batch_runs"]],
        ["files in batches (must equal files)", f"{c['files_in_batches']:,}"],
        ["KV records left after closing", c["kv_left"]],
    ])


if __name__ == "__main__":
    exit_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=2_000, help="events for the naive pattern")
    parser.add_argument("--flights", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--sync", default="always", help="the broker's fsync policy (always, or e.g. 1s)")
    sys.exit(asyncio.run(main(parser.parse_args())))
