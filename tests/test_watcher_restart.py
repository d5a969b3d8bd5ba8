"""The watcher as a separate process, killed by PID: files that arrive while it is down are
announced once when it comes back, and none of the files announced before is announced again."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from conftest import Spawner, wait_for, wait_service
from watch_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    WATCHER_ENV,
    Collector,
    collector_fixture,
    set_watches,
    watch,
)

from shared import wire
from shared.bus import Bus


def _published(beat: dict[str, Any], name: str) -> int:
    return int(beat.get("watches", {}).get(name, {}).get("published", 0))


async def _stream_count(bus: Bus) -> int:
    info = await bus.js.stream_info(wire.STREAM_FILES)
    return int(info.state.messages)


async def test_500_files_arrive_while_watcher_is_down_all_announced_once_none_again(
        spawn: Spawner, bus: Bus, collector: Collector, tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    env = {k.removeprefix("CROPCRON_").lower(): v for k, v in WATCHER_ENV.items()}
    env["watcher_state_dir"] = str(tmp_path / "state")
    await set_watches(bus, watch("uploads", root))
    first = spawn.start("watcher", instance="w1", **env)
    await wait_service(bus, "watcher", "w1")
    for i in range(100):
        (root / f"early{i:03d}.jpg").write_bytes(b"early %d" % i)
    await collector.wait_events(100, timeout=90)

    # the heartbeat reports what is recorded (after the PubAcks): then kill -9, no goodbye
    async def recorded() -> bool:
        return _published(await wait_service(bus, "watcher", "w1"), "uploads") == 100

    await wait_for(recorded, 60, "100 files recorded")
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    for i in range(500):
        sub = root / f"flight{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"late{i:03d}.jpg").write_bytes(b"late %d" % i)
    await asyncio.sleep(1)
    assert len(collector.events) == 100  # nobody was watching

    spawn.start("watcher", instance="w2", **env)
    await collector.wait_events(600, timeout=120)
    await asyncio.sleep(8)  # a few rescans later: nothing more
    counts = collector.counts()
    assert len(collector.events) == 600 and len(counts) == 600, (len(collector.events), len(counts))
    assert sum(1 for rel in counts if rel.startswith(b"flight")) == 500
    assert await _stream_count(bus) == 600

    async def all_known() -> bool:
        beat = await wait_service(bus, "watcher", "w2")
        return int(beat["watches"]["uploads"]["files_known"]) == 600

    await wait_for(all_known, 30, "the restarted watcher to know all 600 files")
