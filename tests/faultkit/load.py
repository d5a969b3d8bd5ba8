"""The load a fault scenario runs under: N interval jobs whose command appends to a ledger, an
`on_file` job fed by files dropped at a steady rate, and the lists of what was due."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.events import file_event_id, file_run_id, tick_run_id
from shared.files import event_for
from shared.schedule import Schedule

EFFECT = Path(__file__).resolve().parent.parent / "jobs" / "effect.sh"
WATCH = "drops"
FILE_JOB = "per_file"


@dataclass
class Load:
    jobs: int = 20  # interval jobs
    interval: float = 1.0  # seconds between their instants
    job_seconds: float = 0.5  # how long each run takes before its effect
    files_per_second: float = 0.0  # 0: no file load

    def tick_jobs(self) -> list[str]:
        return [f"load_{i:02d}" for i in range(self.jobs)]

    @staticmethod
    def catchup(index: int) -> str:
        # half the jobs run every instant they were due after an outage, the other half only the
        # latest one (the default), so the table shows both policies' `missed` reasons
        return "all" if index % 2 == 0 else "latest"


def write_config(path: Path, load: Load, ledger: Path, root: Path) -> None:
    """The YAML a farm would apply: the jobs, the watch and a log channel for alerts."""
    def effect(key: str) -> list[str]:
        return ["/bin/sh", str(EFFECT), str(ledger), "{run_id}", key, "{attempt}", f"{load.job_seconds:g}"]

    common = {"overlap": "allow", "max_retries": 3, "retry_delay": "1s", "retry_jitter": 0, "timeout": "60s"}
    jobs = [{"name": name, "type": "data_cleanup", "interval": f"{load.interval:g}s", "catchup": load.catchup(i),
             **common, "run": effect("{scheduled_at}")} for i, name in enumerate(load.tick_jobs())]
    config: dict[str, object] = {
        "system": {"timezone": "UTC"},
        "notifications": {"channels": {"journal": {"type": "log"}},
                          "rules": [{"name": "failures", "when": ["dead", "timeout", "missed", "service_down",
                                                                                "quorum_lost"],
                                     "channels": ["journal"]}]},
        "jobs": jobs,
    }
    if load.files_per_second:
        config["folder_watches"] = [{"name": WATCH, "path": str(root), "settle": "2s", "rescan_interval": "5s"}]
        jobs.append({"name": FILE_JOB, "type": "image_processing", "on_file": WATCH, **common,
                     "run": effect("{file.rel_path}")})
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def due_ticks(load: Load, start: float, end: float) -> dict[str, tuple[str, datetime]]:
    """run id -> (job, instant) for every instant in (start, end] (epoch seconds)."""
    schedule = Schedule(interval=load.interval)
    lo, hi = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    out: dict[str, tuple[str, datetime]] = {}
    for job in load.tick_jobs():
        for instant in schedule.between(lo, hi, 1_000_000):
            out[tick_run_id(job, instant)] = (job, instant)
    return out


@dataclass
class Drop:
    run_id: str
    name: str
    at: float  # when the file was complete (epoch seconds)


@dataclass
class FileDropper:
    """Writes files into the watch root at a steady rate (`x.part`, then renamed, as an uploader
    should), each second's files together at the instant the interval jobs fire: so file runs,
    too, are mid-job when a fault lands (Timing.phase). `announce`: also publish each FileEvent,
    as an upload tool does (`cropcron publish-file`), for the scenarios where no watcher runs and
    the dispatcher is under test."""

    root: Path
    rate: float  # files per second
    interval: float
    announce: Bus | None = None
    drops: list[Drop] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        k = int(time.time() // self.interval) + 1
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, k * self.interval - time.time()))
                return
            except TimeoutError:
                pass
            # files due by the end of this interval, so any rate is kept on average
            for _ in range(int((k + 1) * self.interval * self.rate) - int(k * self.interval * self.rate)):
                await self._drop(len(self.drops))
            k = max(k + 1, int(time.time() // self.interval) + 1)

    async def _drop(self, n: int) -> None:
        name = f"img_{n:05d}.jpg"
        part = self.root / (name + ".part")
        part.write_bytes(os.urandom(512))
        os.rename(part, self.root / name)
        info = os.lstat(self.root / name)
        event_id = file_event_id(WATCH, name.encode(), info.st_size, info.st_mtime_ns)
        if self.announce is not None:
            event = event_for(WATCH, str(self.root), name.encode(), info, source="faultkit")
            assert event.id == event_id
            # an upload tool retries until the broker has it, whatever is down meanwhile
            await publish_until_acked(self.announce, [(wire.file_subject(WATCH), event.to_bytes(), event.id)],
                                      "faultkit: announcing a file")
        self.drops.append(Drop(file_run_id(FILE_JOB, event_id), name, time.time()))


@dataclass
class LedgerLine:
    kind: str  # start | end
    run_id: str
    key: str
    attempt: int
    pid: int
    at: float  # epoch seconds (the job wrote seconds since boot, to 10 ms)


def _boot_time() -> float:
    """Epoch seconds at boot, so that the ledger's uptime stamps read as wall-clock times."""
    with open("/proc/uptime") as f:
        return time.time() - float(f.read().split()[0])


BOOT = _boot_time()


def read_ledger(path: Path) -> list[LedgerLine]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6:  # a line cut by a kill mid-write would show up here as a shorter one
            out.append(LedgerLine(parts[0], parts[1], parts[2], int(parts[3]), int(parts[4]),
                                  BOOT + float(parts[5])))
    return out
