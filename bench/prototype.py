"""The prototype's pattern, measured the same way as the backbone: APScheduler 3's
BackgroundScheduler with a 20-thread pool, N interval jobs firing every second, each run opening
a new SQLite connection and inserting one row (job, scheduled instant, start time), then
commit and close.

    python bench/prototype.py --jobs 1000 --seconds 10 [--json]

Figures over a window of whole-second instants [t0, t0 + seconds):
  lateness   start time - scheduled instant, of the runs that ran (p50/p99/max)
  run %      distinct (job, instant) rows in SQLite / (jobs x seconds); APScheduler's misfires
             (EVENT_JOB_MISSED), refusals (EVENT_JOB_MAX_INSTANCES), errors (e.g. "database is
             locked") and instants never reached count as not run
  recorded/s commits completed per second during the window

Instrumentation: APScheduler's run_job does not pass the scheduled instant to the job, so the
pool executor's run_job is wrapped to note it in a thread-local (one attribute write per run).
APScheduler's own logging is silenced (its per-misfire warnings to stderr would cost the
prototype more time than the runs themselves), which flatters it slightly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apscheduler.executors.pool as aps_pool
import psutil
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import run_job as _aps_run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile  # noqa: E402

_tls = threading.local()
DB_PATH = ""
COMMITS: list[float] = []  # wall-clock time of each completed commit (list.append is atomic)


def _run_job_noting_instant(job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str) -> list[Any]:
    events: list[Any] = []
    for run_time in run_times:
        _tls.scheduled = run_time
        events += _aps_run_job(job, jobstore_alias, [run_time], logger_name)
    return events


aps_pool.run_job = _run_job_noting_instant  # type: ignore[assignment]


def record_run(name: str) -> None:
    """The prototype's per-run bookkeeping: a new connection, one INSERT, commit, close."""
    started = time.time()
    scheduled = _tls.scheduled.timestamp()
    conn = sqlite3.connect(DB_PATH)
    try:
        conn.execute("INSERT INTO runs (job, scheduled_at, started_at) VALUES (?, ?, ?)", (name, scheduled, started))
        conn.commit()
    finally:
        conn.close()
    COMMITS.append(time.time())


class Refusals:
    """Runs APScheduler decided not to run, by kind: (scheduled instant timestamps)."""

    def __init__(self) -> None:
        self.missed: list[float] = []
        self.max_instances: list[float] = []
        self.errors: list[tuple[float, str]] = []

    def __call__(self, event: Any) -> None:
        if isinstance(event, JobSubmissionEvent):  # max instances: the submission was refused
            self.max_instances += [t.timestamp() for t in event.scheduled_run_times]
        elif isinstance(event, JobExecutionEvent):
            if event.code == EVENT_JOB_MISSED:
                self.missed.append(event.scheduled_run_time.timestamp())
            elif event.code == EVENT_JOB_ERROR:
                kind = f"{type(event.exception).__name__}: {event.exception}"[:80]
                self.errors.append((event.scheduled_run_time.timestamp(), kind))

    def error_kinds(self, t0: float, t1: float) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for stamp, kind in self.errors:
            if t0 <= stamp < t1:
                kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


def _in_window(stamps: list[float], t0: float, t1: float) -> int:
    return sum(1 for s in stamps if t0 <= s < t1)


def _rows(t0: float, t1: float) -> list[tuple[str, float, float]]:
    conn = sqlite3.connect(DB_PATH, timeout=30)
    try:
        return list(conn.execute("SELECT job, scheduled_at, started_at FROM runs WHERE scheduled_at >= ? "
                                 "AND scheduled_at < ?", (t0 - 0.001, t1 - 0.001)))
    finally:
        conn.close()


def _system_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def measure(jobs: int, seconds: int, warmup: int, threads: int = 20) -> dict[str, Any]:
    global DB_PATH
    me = psutil.Process()
    rss_empty = me.memory_info().rss / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="ccbench-proto-"))
    DB_PATH = str(tmp / "runs.sqlite")
    conn = sqlite3.connect(DB_PATH)
    conn.execute("CREATE TABLE runs (job TEXT NOT NULL, scheduled_at REAL NOT NULL, started_at REAL NOT NULL)")
    conn.commit()
    conn.close()

    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
    refusals = Refusals()
    sched = BackgroundScheduler(executors={"default": ThreadPoolExecutor(threads)}, timezone=UTC)
    sched.add_listener(refusals, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
    # first instant: a whole second far enough ahead that adding every job is done by then
    start = float(int(time.time()) + 2 + jobs // 2000)
    start_dt = datetime.fromtimestamp(start, UTC)
    setup_begin = time.monotonic()
    for i in range(jobs):
        name = f"p{i:05d}"
        sched.add_job(record_run, IntervalTrigger(seconds=1, start_date=start_dt, timezone=UTC), args=[name],
                      id=name, name=name)
    sched.start()
    setup_s = time.monotonic() - setup_begin
    t0 = start + warmup
    t1 = t0 + seconds
    sleep_until(t0)
    cpu0 = sum(me.cpu_times()[:2])
    busy0 = _system_busy()
    commits0 = len(COMMITS)
    sleep_until(t1)
    cpu1 = sum(me.cpu_times()[:2])
    busy1 = _system_busy()
    rss = me.memory_info().rss / 2**20
    threads_alive = threading.active_count()
    commits_in_window = sum(1 for c in COMMITS[commits0:] if t0 <= c < t1)
    # drain: runs scheduled in the window may still be queued in the pool (or be declared missed)
    expected = jobs * seconds
    last_change, last_seen = time.monotonic(), -1
    while time.monotonic() - last_change < 3 and time.monotonic() - setup_begin < 10 * 60:
        done = (len(_rows(t0, t1)) + _in_window(refusals.missed, t0, t1) + _in_window(refusals.max_instances, t0, t1)
                + _in_window([e[0] for e in refusals.errors], t0, t1))
        if done >= expected:
            break
        if done != last_seen:
            last_seen, last_change = done, time.monotonic()
        time.sleep(0.5)
    drain_s = time.time() - t1
    rows = _rows(t0, t1)
    instants = {(job, round(s, 3)) for job, s, _ in rows}
    late = sorted((started - s) * 1000 for _, s, started in rows)
    result = {
        "system": "prototype",
        "jobs": jobs,
        "seconds": seconds,
        "expected": expected,
        "run": len(instants),
        "run_pct": 100.0 * len(instants) / expected if expected else None,
        "late_p50_ms": percentile(late, 50),
        "late_p99_ms": percentile(late, 99),
        "late_max_ms": late[-1] if late else None,
        "recorded_per_s": commits_in_window / seconds,
        "missed": _in_window(refusals.missed, t0, t1),
        "max_instances": _in_window(refusals.max_instances, t0, t1),
        "errors": _in_window([e[0] for e in refusals.errors], t0, t1),
        "error_kinds": refusals.error_kinds(t0, t1),
        "never_reached": max(expected - len(instants) - _in_window(refusals.missed, t0, t1)
                             - _in_window(refusals.max_instances, t0, t1) - _in_window([e[0] for e in refusals.errors], t0, t1), 0),
        "cpu_cores": (cpu1 - cpu0) / seconds,
        "cpu_others_cores": max(busy1 - busy0 - (cpu1 - cpu0), 0.0) / seconds,
        "rss_mb": {"prototype": rss},
        "rss_empty_mb": rss_empty,
        "threads": threads_alive,
        "setup_s": setup_s,
        "drain_s": drain_s,
    }
    sched.shutdown(wait=False)
    shutil.rmtree(tmp, ignore_errors=True)  # runs still queued in the pool fail from here on; not counted
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10, help="measurement window (whole seconds)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    result = measure(args.jobs, args.seconds, args.warmup, args.threads)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}", flush=True)
    sys.stdout.flush()
    # queued pool work and the non-daemon pool threads would otherwise hold the exit
    os._exit(0)


if __name__ == "__main__":
    main()
