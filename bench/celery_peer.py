"""The Celery peer, measured the same way as the backbone: Celery 5 with the Redis broker, celery
beat sending N schedule entries of `schedule=1.0` (every second), one worker (prefork pool, 2
processes: Celery's default concurrency on this 2-core box), each task a no-op that records
(job, scheduled instant, start time) into a fresh Postgres database with one INSERT (autocommit).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python bench/celery_peer.py --jobs 1000 --seconds 10 [--json]

Redis: the machine's server on 127.0.0.1:6379 (no persistence), database --redis-db (14), flushed
before and after; every key it writes starts with "ccbench-celery:" (kombu's global_keyprefix).
Beat, the worker and its pool processes are stopped by PID when this script ends, however it
ends; the database is dropped.

Figures over a window [t0, t0 + seconds) of scheduled instants, after --warmup seconds:
  scheduled  the instant beat intended for that send: the entry's due time, last_run_at +
             1 s (what beat's is_due waits for), passed to the task in its arguments by a
             subclass of beat's default scheduler (PersistentScheduler); not a whole second:
             beat sets last_run_at to the time it sent the entry, so an entry sent d late is
             next due 1 + d s after its previous due time (beat drifts, it does not catch up)
  lateness   start of the task (first line of the task function, in the pool process) minus
             scheduled, of the runs that ran (p50/p99/max)
  run %      distinct (job, scheduled) of the window recorded / (jobs x seconds), once beat has
             sent every entry past the window and the queue has drained (at most --drain-max):
             seconds lost to drift count as not run, like the prototype's misfires
  recorded/s growth of the row count in Postgres during the window, sampled every 0.5 s
  beat lag   time beat published the message minus scheduled (beat's share of the lateness)
  cores      CPU per process during the window (beat, worker main process, pool processes,
             redis-server, Postgres backends + writers); redis-server is the system service:
             its CPU counts every client (only this one uses it here, but nothing enforces it),
             its RSS is given as the growth since the start of the measurement
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery import __version__ as CELERY_VERSION
from celery.beat import PersistentScheduler
from celery.signals import worker_ready

# -- the Celery side: beat and the worker import this module (`celery -A celery_peer`) ----------
QUEUE = "ccbench-celery"
KEY_PREFIX = "ccbench-celery:"
TASK = "ccbench.noop"
JOB_PREFIX = "c"

app = Celery("ccbench_celery", broker=os.environ.get("CCBENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(
    enable_utc=True,
    timezone="UTC",
    task_default_queue=QUEUE,
    task_ignore_result=True,  # no result backend: the task records its own row
    broker_transport_options={"global_keyprefix": KEY_PREFIX},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={f"{JOB_PREFIX}{i:05d}": {"task": TASK, "schedule": 1.0}
                   for i in range(int(os.environ.get("CCBENCH_CELERY_JOBS", "0")))},
)

_db: tuple[asyncio.AbstractEventLoop, Any] | None = None  # per pool process: (loop, asyncpg connection)


def _connection() -> tuple[asyncio.AbstractEventLoop, Any]:
    """One connection per pool process, opened by its first task (the fork happens before)."""
    global _db
    if _db is None:
        import asyncpg

        loop = asyncio.new_event_loop()
        _db = (loop, loop.run_until_complete(asyncpg.connect(os.environ["CCBENCH_CELERY_DB"])))
    return _db


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(job: str, scheduled: float, published: float) -> None:
    started = time.time()
    loop, conn = _connection()
    loop.run_until_complete(conn.execute(
        "INSERT INTO runs (job, scheduled_at, published_at, started_at) VALUES ($1, $2, $3, $4)",
        job, scheduled, published, started))


class InstantScheduler(PersistentScheduler):  # type: ignore[misc]
    """Beat's default scheduler, sending (job, due instant, publish time) as the task's arguments.

    tick() calls this with the entry before reserve() moved it on, so entry.last_run_at is the
    previous send and the due time is what is_due() compared the clock with."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if advance:  # beat itself passes advance=False (tick reserves first); kept for other callers
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        now = entry.default_now()
        due = (now + entry.schedule.remaining_estimate(entry.last_run_at)).timestamp()
        options = dict(entry.options, headers={"celery_beat_task": True})
        try:
            return noop.apply_async((entry.name, due, time.time()), producer=producer, **options)
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_kwargs: Any) -> None:
    ready = os.environ.get("CCBENCH_CELERY_READY")
    if ready:
        Path(ready).write_text(str(os.getpid()))


# -- the measurement ------------------------------------------------------------------------
POOL = "prefork"
CONCURRENCY = 2
BENCH = Path(__file__).resolve().parent

WINDOW_SQL = """
SELECT count(*) AS rows,
       count(DISTINCT (job, round(scheduled_at::numeric, 3))) AS run,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY started_at - scheduled_at) AS late,
       max(started_at - scheduled_at) AS late_max,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY published_at - scheduled_at) AS beat_lag,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY started_at - published_at) AS queue_lag,
       count(DISTINCT job) AS jobs_seen
FROM runs WHERE scheduled_at >= $1 AND scheduled_at < $2
"""


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) * 1000


class Run:
    """One measurement: Redis db flushed, a fresh database, the worker, then beat; stop() undoes it all."""

    def __init__(self, jobs: int, args: argparse.Namespace) -> None:
        # the bench side only: beat and the worker never import these
        import redis

        sys.path.insert(0, str(BENCH))
        import backbone
        import common

        self.bb, self.common = backbone, common
        self.jobs, self.args = jobs, args
        self.tag = f"celery-n{jobs}"
        self.redis_url = f"redis://127.0.0.1:{args.redis_port}/{args.redis_db}"
        self.rds = redis.Redis.from_url(self.redis_url)
        self.redis_pid = int(self.rds.info("server")["process_id"])
        self.pg = backbone.Postgres(args.database_url)
        self.tmp = Path(tempfile.mkdtemp(prefix="ccbench-celery-"))
        self.dbname = ""
        self.db: Any = None
        self.procs: dict[str, Any] = {}

    def spawn(self, name: str, argv: list[str]) -> None:
        log = self.bb.LOG_DIR / f"{self.tag}-{name}.log"
        log.unlink(missing_ok=True)
        env = self.common.python_env({
            "PYTHONPATH": str(BENCH), "CCBENCH_REDIS_URL": self.redis_url, "CCBENCH_CELERY_DB": self.pg.url(self.dbname),
            "CCBENCH_CELERY_JOBS": str(self.jobs), "CCBENCH_CELERY_READY": str(self.tmp / "ready")})
        celery = [sys.executable, "-m", "celery", "-A", "celery_peer"]
        self.procs[name] = self.bb.CHILDREN.spawn([*celery, *argv], env=env, log=log, cwd=self.tmp)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"celery {name} exited with code {proc.returncode}; see "
                                   f"{self.bb.LOG_DIR}/{self.tag}-{name}.log")

    async def wait_for(self, what: str, timeout: float, done: Any) -> None:
        deadline = time.monotonic() + timeout
        while not await done():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery: {what} within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def count(self, t0: float | None = None, t1: float | None = None) -> int:
        if t0 is None:
            return int(await self.db.fetchval("SELECT count(*) FROM runs"))
        return int(await self.db.fetchval("SELECT count(*) FROM runs WHERE scheduled_at >= $1 AND scheduled_at < $2",
                                          t0, t1))

    async def start(self) -> float:
        """Worker, then beat; returns the seconds from starting beat to the first recorded run."""
        import asyncpg

        if self.rds.dbsize():
            self.common.log(f"celery: redis db {self.args.redis_db} held {self.rds.dbsize()} keys; flushing it")
        self.rds.flushdb()
        self.dbname = await self.pg.create()
        self.db = await asyncpg.connect(self.pg.url(self.dbname))
        await self.db.execute("CREATE TABLE runs (job text NOT NULL, scheduled_at float8 NOT NULL, "
                              "published_at float8 NOT NULL, started_at float8 NOT NULL)")
        self.spawn("worker", ["worker", f"--pool={POOL}", f"--concurrency={CONCURRENCY}", "-Q", QUEUE,
                              "-n", "ccbench@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                              "--loglevel=WARNING"])
        ready = self.tmp / "ready"

        async def worker_ready() -> bool:
            return ready.exists()

        await self.wait_for("worker not ready", 60, worker_ready)
        began = time.time()
        self.spawn("beat", ["beat", "-S", "celery_peer:InstantScheduler", "-s", str(self.tmp / "beat-schedule"),
                            "--pidfile", str(self.tmp / "beat.pid"), "--loglevel=WARNING"])

        async def recorded() -> bool:
            return await self.count() > 0

        await self.wait_for("no run recorded after starting beat", 120, recorded)
        return time.time() - began

    def groups(self, pool_pids: list[int], pg_pids: list[int]) -> dict[str, list[int]]:
        return {"beat": [self.procs["beat"].pid], "worker": [self.procs["worker"].pid], "pool": pool_pids,
                "redis": [self.redis_pid], "postgres": pg_pids, "bench": [os.getpid()]}

    async def measure(self) -> dict[str, Any]:
        import psutil

        bb, common, args = self.bb, self.common, self.args
        redis_rss0 = common.rss_mb(self.redis_pid)
        startup_s = await self.start()
        t0 = float(math.ceil(time.time()) + args.warmup)
        t1 = t0 + args.seconds
        await bb.sleep_until(t0 - 0.25)
        pool_pids = [p.pid for p in psutil.Process(self.procs["worker"].pid).children(recursive=True)]
        groups = self.groups(pool_pids, await bb.postgres_pids(self.db, self.dbname))
        cpu0 = {k: common.cpu_seconds(v) for k, v in groups.items()}
        busy0 = bb.system_busy()
        samples: list[tuple[float, int]] = []  # (time, rows committed): every row is a run
        # as the backbone's: samples between whole seconds, CPU over [t0 - 0.25, t1 - 0.25)
        cpu1: dict[str, float] = {}
        busy1 = busy0
        while time.time() < t1 + 0.5:
            self.check_alive()
            if not cpu1 and time.time() >= t1 - 0.25:
                cpu1 = {k: common.cpu_seconds(v) for k, v in groups.items()}
                busy1 = bb.system_busy()
            before = time.time()
            rows = await self.count()
            samples.append(((before + time.time()) / 2, rows))
            await bb.sleep_until(bb.next_sample(time.time()))
        queued_at_end = int(self.rds.llen(KEY_PREFIX + QUEUE))
        rss = {"beat": common.rss_mb(self.procs["beat"].pid), "worker": common.rss_mb(self.procs["worker"].pid),
               "pool": sum(common.rss_mb(p) or 0.0 for p in pool_pids)}
        redis_rss = common.rss_mb(self.redis_pid)
        rss["redis Δ"] = None if redis_rss is None or redis_rss0 is None else redis_rss - redis_rss0
        drain_s = await self.drain(t0, t1)
        poller = bb.Poller(self.db)
        poller.samples = samples
        ours = sum(cpu1[k] - cpu0[k] for k in groups)
        return {**await self.window(t0, t1), "recorded_per_s": poller.rate(t0, t1), "queued_at_end": queued_at_end,
                "queued_after_drain": int(self.rds.llen(KEY_PREFIX + QUEUE)), "drain_s": drain_s,
                "startup_s": startup_s, "cpu_cores": {k: (cpu1[k] - cpu0[k]) / args.seconds for k in groups},
                "cpu_others_cores": max((busy1 - busy0) - ours, 0.0) / args.seconds, "rss_mb": rss,
                "config": {"pool": POOL, "concurrency": CONCURRENCY, "broker": self.redis_url, "celery": CELERY_VERSION}}

    async def drain(self, t0: float, t1: float) -> float:
        """After the window, until beat has sent every entry past the window (each job has a row
        due at or after t1: its earlier sends were published before it, so are in Postgres or in
        the queue ahead of it) and the window's count has not grown for 1 s, or all its runs are
        recorded; at most --drain-max. Seconds after t1."""
        expected = self.jobs * self.args.seconds
        passed_sql = "SELECT count(DISTINCT job) FROM runs WHERE scheduled_at >= $1"
        last_seen, last_change = -1, time.monotonic()
        while time.time() - t1 < self.args.drain_max:
            self.check_alive()
            seen = await self.count(t0, t1)
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            if seen >= expected or (time.monotonic() - last_change > 1
                                    and int(await self.db.fetchval(passed_sql, t1)) >= self.jobs):
                break
            await asyncio.sleep(0.25)
        return time.time() - t1

    async def window(self, t0: float, t1: float) -> dict[str, Any]:
        stats = await self.db.fetchrow(WINDOW_SQL, t0, t1)
        late, beat_lag, queue_lag = (stats[k] or [None, None] for k in ("late", "beat_lag", "queue_lag"))
        expected = self.jobs * self.args.seconds
        return {"system": "celery", "jobs": self.jobs, "seconds": self.args.seconds, "expected": expected,
                "run": stats["run"], "run_pct": 100.0 * stats["run"] / expected,
                "late_p50_ms": _ms(late[0]), "late_p99_ms": _ms(late[1]), "late_max_ms": _ms(stats["late_max"]),
                "beat_lag_p50_ms": _ms(beat_lag[0]), "beat_lag_p99_ms": _ms(beat_lag[1]),
                "queue_lag_p50_ms": _ms(queue_lag[0]), "queue_lag_p99_ms": _ms(queue_lag[1]),
                "jobs_seen": stats["jobs_seen"], "duplicates": stats["rows"] - stats["run"]}

    async def stop(self) -> None:
        """Beat first (no sends to a worker that is going), then the worker; pool processes a killed
        worker left behind are killed by PID; then Redis db flushed, database dropped."""
        import psutil

        for name in ("beat", "worker"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            self.bb.CHILDREN.stop(proc, timeout=20)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
        if self.db is not None:
            await self.db.close()
        try:
            self.rds.flushdb()
        finally:
            self.rds.close()
            if self.dbname:
                await self.pg.drop(self.dbname)
            self.pg.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


async def measure(jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(jobs, args)
    try:
        return await run.measure()
    finally:
        await run.stop()


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10, help="measurement window (whole seconds)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds between the first recorded run and the window")
    parser.add_argument("--drain-max", type=float, default=60.0,
                        help="after the window, wait at most this long for its runs to be recorded")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="admin URL of a Postgres server (default: $DATABASE_URL, else an embedded one)")
    parser.add_argument("--redis-port", type=int, default=6379, help="the Redis server on 127.0.0.1")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database index used (flushed!)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    import logging

    from common import exit_on_signals

    exit_on_signals()
    logging.getLogger("cropcron").setLevel(logging.ERROR)
    result = asyncio.run(measure(args.jobs, args))
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}", flush=True)


if __name__ == "__main__":
    main()
