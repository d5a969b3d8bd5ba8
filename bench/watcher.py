"""The watcher's figures (issue 3), beside the prototype's pattern measured in the same run.

    python bench/watcher.py                          # latency, 10,000-file burst, 100,000-file start-up scan
    python bench/watcher.py --burst 2000 --existing 20000 --latency-files 100   # a quick one
    python bench/watcher.py --nats-sync 1s           # the broker fsyncs every second, not per message

The watcher runs as its own process (`cropcron serve watcher`, which also runs the dispatcher; no
jobs are configured, so it only acknowledges) against a private nats-server on a free loopback
port. This script counts every FileEvent with a core subscription on `cropcron.file.>`.

Beside it, in this process, the prototype's pattern: a watchdog Observer whose `on_created`
callback treats the file as arrived. It watches the same folders during the same workloads; for
each callback the file's size at that moment is compared with the size the writer ends with, which
counts the files it would have processed while still incomplete.

Figures (printed, never asserted):
- latency: a file closed -> its FileEvent received, p50/p99 (ms), files written one at a time,
  each in 8 chunks (so an early reporter sees it incomplete);
- burst: N files written as fast as possible; files/s = N / (last event - first write); events lost
  = files never announced within the wait (must be 0); duplicates = announcements beyond one;
- start-up scan: M files already present when the watcher starts: time until all are announced,
  the watcher's RSS; then a restart over the same files (all known): scan time, announcements (0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, Children, exit_on_signals, fmt, log, percentile, print_table, python_env, rss_mb  # noqa: E402,I001

from watchdog.events import FileCreatedEvent, FileSystemEvent, FileSystemEventHandler  # noqa: E402
from watchdog.observers import Observer  # noqa: E402

from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config  # noqa: E402
from shared import wire  # noqa: E402
from shared.bus import Bus, connect  # noqa: E402
from shared.topology import ensure_topology  # noqa: E402
from shared.catalog import write_watches  # noqa: E402
from shared.events import FileEvent, decode  # noqa: E402
from shared.health import instance_key  # noqa: E402
from shared.watch_config import WatchConfig  # noqa: E402

CHILDREN = Children()
LOG_DIR = RESULTS_DIR / "logs"
SETTLE = 2.0  # the watches' settle period in this bench (the default is 10 s)


class Prototype(FileSystemEventHandler):
    """The prototype's pattern: `on_created` means arrived. Records the size seen at callback time."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def on_created(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileCreatedEvent):
            path = os.fsdecode(event.src_path)
            try:
                self.seen.setdefault(path, os.stat(path).st_size)
            except OSError:
                self.seen.setdefault(path, -1)

    def incomplete(self, final: dict[str, int]) -> int:
        return sum(1 for p, size in self.seen.items() if p in final and size != final[p])


class Events:
    """Every FileEvent announced, by relative path, with its arrival time."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.size: dict[tuple[str, str], int] = {}
        self.total = 0

    async def start(self, bus: Bus) -> None:
        async def on_msg(msg: Any) -> None:
            event: FileEvent = decode(FileEvent, msg.data)
            self.total += 1
            key = (event.watch, event.rel_path)
            self.at.setdefault(key, time.time())
            self.size.setdefault(key, event.size)

        await bus.nc.subscribe(wire.FILE_SUBJECTS, cb=on_msg)
        await bus.barrier()  # the subscriptions exist at the server before anything is published

    def count(self, watch: str) -> int:
        return sum(1 for w, _ in self.at if w == watch)

    async def wait(self, watch: str, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while self.count(watch) < n and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a count
            await asyncio.sleep(0.02)
        return max((t for (w, _), t in self.at.items() if w == watch), default=None)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="ccbench-watch-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.watches: list[WatchConfig] = []
        self.events = Events()
        self.proto = Prototype()
        self.observer = Observer()
        self.watcher: Any = None
        self.bus: Bus | None = None

    async def start(self) -> None:
        conf = self.dir / "nats.conf"
        # the broker's fsync policy: "always" (shipped default, one fsync per stored message) or e.g. "1s"
        write_nats_config(self.dir / "js", self.port, conf, sync=self.args.nats_sync)
        proc = CHILDREN.spawn([nats_server_binary(), "-c", str(conf)], log=LOG_DIR / "watch-nats.log")
        wait_port(self.port, time.monotonic() + 15, proc)
        self.bus = await connect(self.url, "bench")
        await ensure_topology(self.bus.js)
        await self.events.start(self.bus)
        self.observer.start()

    async def add_watch(self, name: str, prototype: bool = True) -> Path:
        root = self.dir / name
        root.mkdir(exist_ok=True)
        self.watches.append(WatchConfig(name=name, path=str(root), settle=SETTLE, rescan_interval=10.0))
        assert self.bus is not None
        await write_watches(self.bus, self.watches)
        if prototype:
            self.observer.schedule(self.proto, str(root), recursive=True)
        return root

    def start_watcher(self, instance: str) -> None:
        env = python_env({"NATS_URL": self.url, "CROPCRON_INSTANCE": instance, "CROPCRON_HEARTBEAT_INTERVAL": "1",
                          "CROPCRON_WATCHER_STATE_DIR": str(self.dir / "state")})
        self.watcher = CHILDREN.spawn([sys.executable, "-m", "cropcron", "serve", "watcher"], env=env,
                                      log=LOG_DIR / f"watcher-{instance}.log", cwd=ROOT)

    async def status(self, instance: str, watch: str) -> dict[str, Any]:
        assert self.bus is not None
        kv = await self.bus.js.key_value(wire.KV_SERVICES)
        try:
            entry = await kv.get(instance_key("watcher", instance))
        except Exception:
            return {}
        return dict(json.loads(entry.value or b"{}").get("watches", {}).get(watch, {}))

    async def wait_live(self, instance: str, watch: str) -> None:
        deadline = time.monotonic() + 60
        while not (await self.status(instance, watch)).get("root_available"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"watcher {instance} did not start watching {watch}; see {LOG_DIR}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.observer.stop()
        CHILDREN.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_chunked(path: Path, size: int, chunks: int, pause: float = 0.0) -> float:
    """Create, write in chunks (flushed), close; returns the time of the close."""
    piece = os.urandom(size // chunks)
    with open(path, "wb") as f:
        for _ in range(chunks):
            f.write(piece)
            f.flush()
            if pause:
                time.sleep(pause)
    return time.time()


async def latency(b: Bench, n: int) -> dict[str, Any]:
    root = await b.add_watch("latency")
    await b.wait_live("w1", "latency")
    closed: dict[str, float] = {}
    final: dict[str, int] = {}
    for i in range(n):
        name = f"img{i:05d}.jpg"
        closed[name] = await asyncio.to_thread(write_chunked, root / name, 64 * 1024, 8, 0.002)
        final[str(root / name)] = 64 * 1024
        await asyncio.sleep(0.02)
    await b.events.wait("latency", n, 60)
    lat = sorted((b.events.at[("latency", k)] - t) * 1000 for k, t in closed.items() if ("latency", k) in b.events.at)
    ours_incomplete = sum(1 for k in closed if b.events.size.get(("latency", k), 64 * 1024) != 64 * 1024)
    return {"files": n, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "announced": len(lat),
            "ours_incomplete": ours_incomplete, "proto_reported": sum(1 for p in b.proto.seen if p in final),
            "proto_incomplete": b.proto.incomplete(final)}


async def burst(b: Bench, n: int) -> dict[str, Any]:
    root = await b.add_watch("burst")
    await b.wait_live("w1", "burst")
    final: dict[str, int] = {}
    started = time.time()

    def drop() -> None:
        for i in range(n):
            folder = root / f"flight{i // 1000}"
            folder.mkdir(exist_ok=True)
            path = folder / f"IMG_{i:05d}.jpg"
            with open(path, "wb") as f:
                f.write(b"x" * 1024)
                f.flush()
                f.write(b"y" * 1024)  # two writes: an on_created reader can catch the first half
            final[str(path)] = 2048

    await asyncio.to_thread(drop)
    written = time.time() - started
    last = await b.events.wait("burst", n, 120)
    await asyncio.sleep(2)
    got = b.events.count("burst")
    return {"files": n, "write_s": written, "files_per_s": n / (last - started) if last else None,
            "lost": n - got, "duplicates": max(0, b.events.total - len(b.events.at)),
            "proto_reported": sum(1 for p in b.proto.seen if p in final), "proto_incomplete": b.proto.incomplete(final)}


async def startup(b: Bench, m: int) -> dict[str, Any]:
    root = b.dir / "existing"
    log(f"writing {m:,} existing files")
    for i in range(m):
        folder = root / f"f{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"IMG_{i:06d}.jpg").write_bytes(b"%d" % i)
    b.stop_watcher()
    before = b.events.count("existing")
    started = time.time()
    b.start_watcher("w2")
    await b.add_watch("existing", prototype=False)
    last = await b.events.wait("existing", m, 600)
    first_s = (last - started) if last else None
    rss_first = rss_mb(b.watcher.pid)
    st = await b.status("w2", "existing")
    b.stop_watcher()
    total_before = b.events.total
    b.start_watcher("w3")  # restart over the same (now known) files
    deadline = time.monotonic() + 120
    while (st2 := await b.status("w3", "existing")).get("scans", 0) < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    return {"files": m, "announced": b.events.count("existing") - before, "first_s": first_s,
            "first_scan_s": st.get("last_scan_s"), "rss_mb": rss_first, "restart_scan_s": st2.get("last_scan_s"),
            "restart_announced": b.events.total - total_before, "restart_rss_mb": rss_mb(b.watcher.pid)}


def _stop_watcher(self: Bench) -> None:
    if self.watcher is not None:
        CHILDREN.stop(self.watcher)
        self.watcher = None


Bench.stop_watcher = _stop_watcher  # type: ignore[attr-defined]


async def main(args: argparse.Namespace) -> None:
    b = Bench(args)
    try:
        await b.start()
        b.start_watcher("w1")
        log(f"latency: {args.latency_files} files")
        lat = await latency(b, args.latency_files)
        log(f"burst: {args.burst:,} files")
        bur = await burst(b, args.burst)
        log(f"start-up scan: {args.existing:,} files")
        up = await startup(b, args.existing)
    finally:
        b.stop()
    print(f"\nbroker sync_interval: {args.nats_sync}; load average at the end: {os.getloadavg()[0]:.1f}")
    print("\nDetection latency (file closed -> FileEvent received); the prototype reacts on created")
    print_table(["files", "p50 ms", "p99 ms", "announced", "announced incomplete",
                 "prototype: reported", "prototype: reported incomplete"],
                [[lat["files"], fmt(lat["p50_ms"]), fmt(lat["p99_ms"]), lat["announced"], lat["ours_incomplete"],
                  lat["proto_reported"], lat["proto_incomplete"]]])
    print("\nBurst")
    print_table(["files", "written in s", "files/s", "events lost", "duplicates",
                 "prototype: reported", "prototype: reported incomplete"],
                [[bur["files"], fmt(bur["write_s"]), fmt(bur["files_per_s"], 0), bur["lost"], bur["duplicates"],
                  bur["proto_reported"], bur["proto_incomplete"]]])
    print("\nStart-up scan of existing files")
    print_table(["files", "all announced in s", "scan s", "RSS MB", "restart: scan s", "restart: announced",
                 "restart: RSS MB"],
                [[up["files"], fmt(up["first_s"]), fmt(up["first_scan_s"], 2), fmt(up["rss_mb"]),
                  fmt(up["restart_scan_s"], 2), up["restart_announced"], fmt(up["restart_rss_mb"])]])
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"watcher-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"latency": lat, "burst": bur, "startup": up}, indent=2))
    log(f"raw results: {out}")


if __name__ == "__main__":
    exit_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-files", type=int, default=300)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--existing", type=int, default=100_000)
    parser.add_argument("--nats-sync", default="always", help="the broker's sync_interval: always (default), 1s, ...")
    asyncio.run(main(parser.parse_args()))
