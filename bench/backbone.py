"""The backbone under load: N jobs firing every second through timer -> JetStream -> runner ->
run events -> history -> Postgres, each service a separate process, measured end to end.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python bench/backbone.py --sizes 1,100,1000,10000 --seconds 10

Per size it starts a private nats-server (free loopback port, temp store, the shipped config:
`sync_interval: always`), creates a fresh database (on DATABASE_URL's server, else the embedded
Postgres of `cropcron up`), applies N `call: trivial:noop` jobs with `interval: 1`, `overlap: allow`,
`max_retries: 0`, starts `cropcron serve history|runner|timer` as processes, waits `--warmup`
seconds, then measures a window of whole-second instants [t0, t0 + seconds):

  lateness    started_at - scheduled_at of the window's runs (the runner's clock at the start
              of the attempt), p50/p99/max
  run %       runs of the window that reached `succeeded` in history within --drain-max (60 s)
              after the window / (N x seconds)
  recorded/s  growth of the count of succeeded rows in Postgres during the window, sampled by a
              poller every 0.5 s: trigger -> history row committed
  timer pub   when the first / last job's trigger of each instant reached the broker (core NATS
              subscription to the sample jobs' subjects): how much of the lateness is the timer's
  row lag     created_at - scheduled_at (Postgres now() of the transaction that first inserted
              the run's row)
  cpu         CPU seconds per process during the window / window seconds (cores used)

Everything it starts is stopped by PID when it ends, however it ends; the database is dropped.
Use --ingest EVENTS to measure the history service alone (a backlog of run events, then time
until all rows are committed), and --runner-alone TRIGGERS for the runner alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    ROOT,
    Children,
    cpu_seconds,
    exit_on_signals,
    fmt,
    log,
    print_table,
    python_env,
    rss_mb,
)

from cropcron import commands  # noqa: E402
from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config  # noqa: E402
from cropcron.embedded_pg import EmbeddedPostgres  # noqa: E402
from shared import wire  # noqa: E402
from shared.bus import Bus, connect, publish_all  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.events import RunEvent, RunState, Trigger, tick_run_id  # noqa: E402
from shared.health import instance_key  # noqa: E402
from shared.topology import ensure_topology  # noqa: E402

CHILDREN = Children()
LOG_DIR = RESULTS_DIR / "logs"


# -- servers ---------------------------------------------------------------------------------
class Nats:
    def __init__(self, sync: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ccbench-nats-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        conf = self.dir / "nats.conf"
        # the shipped config (cropcron.embedded), with its fsync policy: "always" (the shipped
        # default: one fsync per stored message), an interval such as "1s", or "default" (no
        # sync_interval line: nats-server's own 2 min)
        write_nats_config(self.dir / "js", self.port, conf, sync="always" if sync == "default" else sync)
        if sync == "default":
            conf.write_text(conf.read_text().replace("  sync_interval: always\n", ""))
        self.proc = CHILDREN.spawn([nats_server_binary(), "-c", str(conf)], log=LOG_DIR / "nats-server.log")
        wait_port(self.port, time.monotonic() + 15, self.proc)

    def stop(self) -> None:
        CHILDREN.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A fresh database per measurement on DATABASE_URL's server, else on the embedded Postgres of
    `cropcron up` (cropcron/embedded_pg.py)."""

    def __init__(self, admin_url: str | None) -> None:
        self.server: EmbeddedPostgres | None = None
        self.pgdata: Path | None = None
        if not admin_url:
            self.pgdata = Path(tempfile.mkdtemp(prefix="ccbench-pg-"))
            self.pgdata.chmod(0o711)  # as root, Postgres runs as an unprivileged user that must pass
            self.server = EmbeddedPostgres(self.pgdata)
            self.server.prepare()
            self.server.start(60)
            admin_url = self.server.url
        self.admin_url = admin_url

    def url(self, dbname: str) -> str:
        base, _, query = self.admin_url.partition("?")
        head, _, _ = base.rpartition("/")
        return f"{head}/{dbname}" + (f"?{query}" if query else "")

    async def create(self) -> str:
        name = f"ccbench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata, ignore_errors=True)


async def postgres_pids(db: asyncpg.Connection, dbname: str) -> list[int]:
    """Backends of our database plus the server's WAL writer, checkpointer and bgwriter."""
    rows = await db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type IN "
                          "('walwriter', 'checkpointer', 'background writer')", dbname)
    return [r["pid"] for r in rows]


# -- services --------------------------------------------------------------------------------
class Services:
    def __init__(self, nats_url: str, db_url: str, args: argparse.Namespace, tag: str) -> None:
        self.nats_url = nats_url
        self.db_url = db_url
        self.args = args
        self.tag = tag
        self.procs: dict[str, Any] = {}

    def start(self, name: str, service: str, **env: str) -> None:
        log_path = LOG_DIR / f"{self.tag}-{name}.log"
        log_path.unlink(missing_ok=True)
        full_env = python_env({"NATS_URL": self.nats_url, "DATABASE_URL": self.db_url, "CROPCRON_INSTANCE": name,
                               "CROPCRON_HEARTBEAT_INTERVAL": "1", **env})
        entry = ["-m", "cropcron"]
        if self.args.whatif:  # a candidate fix applied in memory (bench/whatif.py)
            entry = [str(BENCH_DIR / "whatif.py")]
            full_env.update(CROPCRON_BENCH_FIXES=self.args.whatif, CROPCRON_BENCH_EXTRA_WAIT=str(self.args.extra_wait))
        self.procs[name] = CHILDREN.spawn([sys.executable, *entry, "serve", service], env=full_env, log=log_path,
                                          cwd=ROOT)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"service {name} exited with code {proc.returncode}; see {LOG_DIR}/{self.tag}-"
                                   f"{name}.log")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            CHILDREN.stop(proc, timeout=20)
        self.procs.clear()


async def wait_heartbeat(bus: Bus, services: Services, service: str, name: str, timeout: float = 90,
                         role: str | None = None) -> dict[str, Any]:
    kv = await bus.js.key_value(wire.KV_SERVICES)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        with contextlib.suppress(Exception):
            entry = await kv.get(instance_key(service, name))
            body: dict[str, Any] = json.loads(entry.value or b"{}")
            if role is None or body.get("role") == role:
                return body
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{service} {name}: no heartbeat within {timeout:.0f}s")


def runner_env(args: argparse.Namespace, jobs: int) -> dict[str, str]:
    # enough run slots that a whole instant can be in flight at once (each run is ~1 ms)
    concurrency = args.concurrency or min(max(jobs, 16), 2000)
    return {"CROPCRON_CONCURRENCY": str(concurrency), "CROPCRON_FETCH_BATCH": str(args.fetch_batch)}


def job_names(jobs: int) -> list[str]:
    return [f"b{i:05d}" for i in range(jobs)]


async def apply_jobs(bus: Bus, jobs: int) -> float:
    raw = {"system": {"timezone": "UTC"}, "jobs": [
        {"name": name, "type": "image_processing", "interval": 1, "call": "trivial:noop", "overlap": "allow",
         "max_retries": 0, "catchup": "skip"} for name in job_names(jobs)]}
    began = time.monotonic()
    await commands.apply(bus, parse_config(raw), BENCH_DIR)
    return time.monotonic() - began


# -- measurement -----------------------------------------------------------------------------
class Poller:
    """Samples the count of succeeded rows, so recorded/s is measured at Postgres, after commit."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.samples: list[tuple[float, int]] = []

    async def sample(self) -> int:
        before = time.time()
        count = int(await self.db.fetchval("SELECT count(*) FROM runs WHERE state = 'succeeded'"))
        self.samples.append(((before + time.time()) / 2, count))
        return count

    def rate(self, t0: float, t1: float) -> float | None:
        # the samples at t0 - 0.25 and t1 - 0.25: the window's ten instants, over ten seconds
        inside = [s for s in self.samples if t0 - 0.3 <= s[0] <= t1 - 0.2]
        if len(inside) < 2:
            return None
        (ta, ca), (tb, cb) = inside[0], inside[-1]
        return (cb - ca) / (tb - ta) if tb > ta else None


class TriggerProbe:
    """When sample jobs' triggers reach the broker (a plain subscription sees every publish)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, float]]] = {}

    async def start(self, bus: Bus, names: dict[str, str]) -> None:
        for label, name in names.items():
            self.seen[label] = []

            async def on_msg(msg: Any, _label: str = label) -> None:
                scheduled = datetime.fromisoformat(json.loads(msg.data)["scheduled_at"]).timestamp()
                self.seen[_label].append((scheduled, time.time() - scheduled))

            await bus.nc.subscribe(wire.trigger_subject("normal", name), cb=on_msg)

    def delays_ms(self, label: str, t0: float, t1: float) -> list[float]:
        return sorted(d * 1000 for s, d in self.seen.get(label, []) if t0 <= s < t1)


def system_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(t - time.time(), 0.0))


def next_sample(now: float) -> float:
    """The next x.25 or x.75 s: between the instants (whole seconds), so the bench's own queries
    and /proc reads never land on a burst. (Sampling on the half-seconds, x.0 included, put a
    Postgres query and the CPU reads on every instant, and the 100-jobs tail showed it.)"""
    base = math.floor(now)
    return next(base + off for off in (0.25, 0.75, 1.25) if base + off > now)


WINDOW_SQL = """
SELECT count(*) AS rows,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'missed') AS missed,
       count(*) FILTER (WHERE state = 'skipped') AS skipped,
       count(*) FILTER (WHERE state IN ('dead', 'failed', 'retrying')) AS failed,
       count(*) FILTER (WHERE state = 'started') AS started_only,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_at))
           FILTER (WHERE state = 'succeeded') AS late,
       max(extract(epoch FROM started_at - scheduled_at)) FILTER (WHERE state = 'succeeded') AS late_max,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM created_at - scheduled_at))
           FILTER (WHERE state = 'succeeded') AS row_lag,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_s) FILTER (WHERE state = 'succeeded') AS exec_p50
FROM runs WHERE scheduled_at >= $1 AND scheduled_at < $2
"""


# each instant of the window: its runs' median and worst lateness, to tell a slow instant (a
# stall) from a steady tail
INSTANT_SQL = """
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_at)) AS p50,
       max(extract(epoch FROM started_at - scheduled_at)) AS max
FROM runs WHERE state = 'succeeded' AND scheduled_at >= $1 AND scheduled_at < $2
GROUP BY scheduled_at ORDER BY scheduled_at
"""


async def window_counts(db: asyncpg.Connection, t0: float, t1: float) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM runs WHERE state = 'succeeded' AND scheduled_at >= $1 AND scheduled_at < $2",
        datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC)))


async def drain(db: asyncpg.Connection, t0: float, t1: float, expected: int, args: argparse.Namespace) -> float:
    """After the window: wait until its runs are all in Postgres, at most --drain-max seconds (a run
    that comes later, e.g. redelivered after ack_wait, counts as not run). Seconds after t1."""
    while time.time() - t1 < args.drain_max:
        if await window_counts(db, t0, t1) >= expected:
            break
        await asyncio.sleep(0.25)
    return time.time() - t1


async def consumer_states(bus: Bus) -> dict[str, dict[str, int]]:
    """At the end: what each durable has not yet delivered (pending), delivered but not had acked
    (ack_pending: in a client's hands, or lost there until ack_wait redelivers it), redelivered."""
    out = {}
    for stream, durable in ((wire.STREAM_TRIGGERS, wire.runner_consumer("normal")),
                            (wire.STREAM_RUNS, wire.HISTORY_CONSUMER)):
        with contextlib.suppress(Exception):
            info = await bus.js.consumer_info(stream, durable)
            out[durable] = {"pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0,
                            "redelivered": info.num_redelivered or 0, "waiting": info.num_waiting or 0}
    return out


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) * 1000


async def measure(jobs: int, args: argparse.Namespace, pg: Postgres) -> dict[str, Any]:
    tag = f"n{jobs}"
    nats = Nats(args.nats_sync)
    dbname = await pg.create()
    db_url = pg.url(dbname)
    services = Services(nats.url, db_url, args, tag)
    bus: Bus | None = None
    db: asyncpg.Connection | None = None
    profiler = None
    try:
        bus = await connect(nats.url, "bench")
        await ensure_topology(bus.js)
        apply_s = await apply_jobs(bus, jobs)
        log(f"{tag}: {jobs} jobs applied in {apply_s:.1f}s; starting services")
        services.start("history", "history", CROPCRON_HISTORY_BATCH=str(args.history_batch))
        for i in range(args.runners):
            services.start(f"runner{i}", "runner", **runner_env(args, jobs))
        await wait_heartbeat(bus, services, "history", "history")
        for i in range(args.runners):
            await wait_heartbeat(bus, services, "runner", f"runner{i}")
        services.start("timer", "timer", CROPCRON_TICK_LEAD=str(args.tick_lead))
        await wait_heartbeat(bus, services, "timer", "timer", role="leader")
        names = job_names(jobs)
        probe = TriggerProbe()
        await probe.start(bus, {"first": names[0], "last": names[-1]})
        db = await asyncpg.connect(db_url)
        poller = Poller(db)
        t0 = float(math.ceil(time.time()) + args.warmup)
        t1 = t0 + args.seconds
        await sleep_until(t0 - 0.25)
        pids = services.pids()
        pg_pids = await postgres_pids(db, dbname)
        groups = {**{k: [v] for k, v in pids.items()}, "nats-server": [nats.proc.pid], "postgres": pg_pids,
                  "bench": [os.getpid()]}
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        busy0 = system_busy()
        if args.profile:
            profiler = start_profile(args.profile, pids, jobs, args.seconds)
        # sample between the instants; CPU over [t0 - 0.25, t1 - 0.25), the window's length
        cpu1: dict[str, float] = {}
        busy1 = busy0
        while time.time() < t1 + 0.5:
            services.check_alive()
            if not cpu1 and time.time() >= t1 - 0.25:
                cpu1 = {k: cpu_seconds(v) for k, v in groups.items()}
                busy1 = system_busy()
            await poller.sample()
            await sleep_until(next_sample(time.time()))
        rss = {k: rss_mb(v) for k, v in pids.items()}
        rss["nats-server"] = rss_mb(nats.proc.pid)
        expected = jobs * args.seconds
        drain_s = await drain(db, t0, t1, expected, args)
        await poller.sample()
        stats = await db.fetchrow(WINDOW_SQL, datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC))
        by_instant = [[round(float(r["p50"]) * 1000, 2), round(float(r["max"]) * 1000, 2)] for r in await db.fetch(
            INSTANT_SQL, datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC))]
        heart = await wait_heartbeat(bus, services, "timer", "timer")
        consumers = await consumer_states(bus)
        reasons = {f"{r['state']}: {r['reason']}": r["n"] for r in await db.fetch(
            "SELECT state, left(coalesce(reason, error, ''), 100) AS reason, count(*) AS n FROM runs WHERE "
            "state <> 'succeeded' AND scheduled_at >= $1 AND scheduled_at < $2 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5",
            datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC))}
        if profiler is not None:
            profiler.wait(timeout=60)
        cores = {k: (cpu1[k] - cpu0[k]) / args.seconds for k in groups}
        ours = sum(cpu1[k] - cpu0[k] for k in groups)
        late = stats["late"] or [None, None]
        row_lag = stats["row_lag"] or [None, None]
        first, last = probe.delays_ms("first", t0, t1), probe.delays_ms("last", t0, t1)
        return {
            "system": "backbone",
            "tick_lead": args.tick_lead,
            "jobs": jobs,
            "seconds": args.seconds,
            "expected": expected,
            "run": stats["succeeded"],
            "run_pct": 100.0 * stats["succeeded"] / expected,
            "late_p50_ms": _ms(late[0]),
            "late_p99_ms": _ms(late[1]),
            "late_by_instant_ms": by_instant,  # [p50, max] per instant of the window
            "late_max_ms": _ms(stats["late_max"]),
            "recorded_per_s": poller.rate(t0, t1),
            "row_lag_p50_ms": _ms(row_lag[0]),
            "row_lag_p99_ms": _ms(row_lag[1]),
            "exec_p50_ms": _ms(stats["exec_p50"]),
            "timer_first_p50_ms": first[len(first) // 2] if first else None,
            "timer_last_p50_ms": last[len(last) // 2] if last else None,
            "timer_last_max_ms": last[-1] if last else None,
            "missed": stats["missed"],
            "skipped": stats["skipped"],
            "failed": stats["failed"],
            "started_only": stats["started_only"],
            "not_recorded": expected - stats["rows"],
            "drain_s": drain_s,
            "apply_s": apply_s,
            "cpu_cores": cores,
            "cpu_others_cores": max((busy1 - busy0) - ours, 0.0) / args.seconds,
            "rss_mb": rss,
            "timer_status": {k: heart.get(k) for k in ("fired", "missed", "scheduled_jobs")},
            "consumers": consumers,
            "not_succeeded_reasons": reasons,
            "config": {"runners": args.runners, **runner_env(args, jobs), "history_batch": args.history_batch,
                       "nats_sync": args.nats_sync, "whatif": args.whatif},
        }
    finally:
        if profiler is not None and profiler.poll() is None:
            CHILDREN.stop(profiler)
        await _teardown(services, db, bus, nats, pg, dbname)


async def _teardown(services: Any, db: Any, bus: Bus | None, nats: Any, pg: Postgres, dbname: str) -> None:
    """Stop what a measurement started, in order: services, connections, broker, database."""
    services.stop()
    if db is not None:
        await db.close()
    if bus is not None:
        with contextlib.suppress(Exception):
            await bus.close()
    nats.stop()
    await pg.drop(dbname)


# -- one stage alone -------------------------------------------------------------------------
async def _backlog(bus: Bus, items: list[tuple[str, bytes, str]]) -> None:
    for i in range(0, len(items), 5000):
        failed = await publish_all(bus, items[i:i + 5000], timeout=60)
        if failed:
            raise RuntimeError(f"{len(failed)} backlog messages not acknowledged")


async def _count_until(db: asyncpg.Connection, sql: str, target: int, services: Services,
                       timeout: float = 600) -> tuple[float, float, int]:
    """(time the first row appeared, time the target was reached, final count)."""
    first = done = None
    count = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        with contextlib.suppress(asyncpg.UndefinedTableError):
            count = int(await db.fetchval(sql))
        now = time.time()
        if count and first is None:
            first = now
        if count >= target:
            done = now
            break
        await asyncio.sleep(0.1)
    return first or time.time(), done or time.time(), count


async def measure_ingest(events: int, args: argparse.Namespace, pg: Postgres) -> dict[str, Any]:
    """History alone: `events` run events (started + succeeded pairs) already in the stream, then
    history starts; rows committed per second from the first row to the last."""
    nats = Nats(args.nats_sync)
    dbname = await pg.create()
    db_url = pg.url(dbname)
    services = Services(nats.url, db_url, args, "ingest")
    bus: Bus | None = None
    db: asyncpg.Connection | None = None
    try:
        bus = await connect(nats.url, "bench")
        await ensure_topology(bus.js)
        now = datetime.now(UTC).replace(microsecond=0)
        items: list[tuple[str, bytes, str]] = []
        for i in range(events // 2):
            job = f"b{i % 10000:05d}"
            instant = now - timedelta(seconds=i // 10000)
            run_id = tick_run_id(job, instant)
            for state in (RunState.STARTED, RunState.SUCCEEDED):
                ev = RunEvent(run_id=run_id, job=job, job_type="image_processing", state=state, attempt=1, at=now,
                              trigger_kind="tick", scheduled_at=instant, started_at=now,
                              finished_at=now if state is RunState.SUCCEEDED else None,
                              duration_s=0.001 if state is RunState.SUCCEEDED else None, runner="bench")
                items.append((wire.run_event_subject(job, state), ev.to_bytes(), ev.msg_id()))
        began = time.monotonic()
        await _backlog(bus, items)
        log(f"ingest: {len(items)} run events published in {time.monotonic() - began:.1f}s; starting history")
        db = await asyncpg.connect(db_url)
        services.start("history", "history", CROPCRON_HISTORY_BATCH=str(args.history_batch))
        first, done, count = await _count_until(
            db, "SELECT count(*) FROM runs WHERE state = 'succeeded'", events // 2, services)
        cpu = cpu_seconds([services.procs["history"].pid])  # start-up included
        return {"stage": "history ingest", "events": len(items), "runs": count, "seconds": done - first,
                "runs_per_s": count / (done - first) if done > first else None,
                "events_per_s": 2 * count / (done - first) if done > first else None,
                "history_cpu_s": cpu, "history_cpu_us_per_run": 1e6 * cpu / count if count else None,
                "history_batch": args.history_batch}
    finally:
        await _teardown(services, db, bus, nats, pg, dbname)


async def measure_runner_alone(triggers: int, args: argparse.Namespace, pg: Postgres) -> dict[str, Any]:
    """Runner alone: `triggers` triggers (for 1,000 jobs) already queued, then the runner starts;
    triggers settled per second (the triggers stream empties as they are acked)."""
    nats = Nats(args.nats_sync)
    dbname = await pg.create()
    services = Services(nats.url, pg.url(dbname), args, "runner-alone")
    bus: Bus | None = None
    try:
        bus = await connect(nats.url, "bench")
        await ensure_topology(bus.js)
        jobs = min(triggers, 1000)
        await apply_jobs(bus, jobs)
        now = datetime.now(UTC).replace(microsecond=0)
        items = []
        for i in range(triggers):
            job = f"b{i % jobs:05d}"
            instant = now - timedelta(seconds=i // jobs)
            tr = Trigger(run_id=tick_run_id(job, instant), job=job, kind="tick", scheduled_at=instant, created_at=now)
            items.append((wire.trigger_subject("normal", job), tr.to_bytes(), tr.run_id))
        await _backlog(bus, items)
        log(f"runner alone: {triggers} triggers queued; starting the runner")
        services.start("runner0", "runner", **runner_env(args, triggers))
        first = done = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            services.check_alive()
            info = await bus.js.stream_info(wire.STREAM_TRIGGERS)
            left = info.state.messages
            now_t = time.time()
            if left < triggers and first is None:
                first = now_t
            if left == 0:
                done = now_t
                break
            await asyncio.sleep(0.1)
        cpu = cpu_seconds([services.procs["runner0"].pid])
        seconds = (done or time.time()) - (first or time.time())
        return {"stage": "runner alone", "triggers": triggers, "seconds": seconds,
                "runs_per_s": triggers / seconds if done and seconds > 0 else None, "runner_cpu_s": cpu,
                "runner_cpu_us_per_run": 1e6 * cpu / triggers,
                **runner_env(args, triggers)}
    finally:
        await _teardown(services, None, bus, nats, pg, dbname)


# -- profiling -------------------------------------------------------------------------------
def start_profile(service: str, pids: dict[str, int], jobs: int, seconds: int) -> Any:
    pid = pids[service]
    out = RESULTS_DIR / f"profile-{service}-n{jobs}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    return CHILDREN.spawn([py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                           "--format", "raw", "--nonblocking", "--output", str(out)], log=LOG_DIR / "py-spy.log")


def summarize_profile(path: Path, top: int = 25) -> str:
    """Collapsed stacks -> the functions with the most samples, inclusive and self."""
    inclusive: dict[str, int] = {}
    self_time: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                  for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
    lines = [f"{path.name}: {total} samples"]
    lines.append("  inclusive:")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    lines.append("  self:")
    for frame, count in sorted(self_time.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


# -- output ----------------------------------------------------------------------------------
HEADERS = ["N jobs/s", "system", "late p50 ms", "late p99 ms", "late max ms", "instants run %", "recorded/s",
           "RSS MB"]


def table_row(r: dict[str, Any]) -> list[str]:
    rss = r.get("rss_mb") or {}
    rss_text = " + ".join(f"{k} {v:.0f}" for k, v in rss.items() if v is not None)
    return [fmt(r["jobs"]), r["system"], fmt(r["late_p50_ms"], 2), fmt(r["late_p99_ms"], 2), fmt(r["late_max_ms"], 1),
            fmt(r["run_pct"], 2), fmt(r["recorded_per_s"], 0), rss_text]


DETAIL_HEADERS = ["N", "timer first/last p50 ms", "row lag p50/p99 ms", "drain s", "missed/failed/unrecorded",
                  "cores: timer runner history nats pg bench; others", "CPU µs/run: timer runner history nats pg",
                  "runner consumer at end: pending/unacked/redelivered"]


def detail_row(r: dict[str, Any]) -> list[str]:
    c = r["cpu_cores"]
    runners = sum(v for k, v in c.items() if k.startswith("runner"))
    return [fmt(r["jobs"]), f"{fmt(r['timer_first_p50_ms'], 1)} / {fmt(r['timer_last_p50_ms'], 1)}",
            f"{fmt(r['row_lag_p50_ms'], 0)} / {fmt(r['row_lag_p99_ms'], 0)}", fmt(r["drain_s"], 1),
            "/".join(fmt(r[k], 0) for k in ("missed", "failed", "not_recorded")),
            f"{c['timer']:.2f} {runners:.2f} {c['history']:.2f} {c['nats-server']:.2f} {c['postgres']:.2f} "
            f"{c['bench']:.2f}; {r['cpu_others_cores']:.2f}",
            " ".join(fmt(1e6 * v / r["recorded_per_s"], 0) if r.get("recorded_per_s") else "-"
                     for v in (c["timer"], runners, c["history"], c["nats-server"], c["postgres"])),
            "/".join(fmt(r.get("consumers", {}).get("runner-normal", {}).get(k)) for k in
                     ("pending", "ack_pending", "redelivered"))]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1,100,1000,10000", help="comma-separated job counts (jobs/s)")
    parser.add_argument("--seconds", type=int, default=10, help="measurement window, whole seconds")
    parser.add_argument("--warmup", type=int, default=5, help="seconds between the timer leading and the window")
    parser.add_argument("--runners", type=int, default=1, help="runner processes")
    parser.add_argument("--concurrency", type=int, default=0, help="runner slots (0: min(max(N,16),2000))")
    parser.add_argument("--fetch-batch", type=int, default=256)
    parser.add_argument("--history-batch", type=int, default=1000)
    parser.add_argument("--nats-sync", default="always",
                        help="the broker's sync_interval: always (shipped default: fsync every stored message), "
                             "an interval such as 1s, or 'default' (nats-server's own, 2 min)")
    parser.add_argument("--tick-lead", type=float, default=0.0,
                        help="the timer's CROPCRON_TICK_LEAD: ticks published this many seconds early, started "
                             "at their instant by the runner (0: published at the instant)")
    parser.add_argument("--drain-max", type=float, default=60.0,
                        help="after the window, wait at most this long for its runs to reach history")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="admin URL of a Postgres server (default: $DATABASE_URL, else an embedded one)")
    parser.add_argument("--whatif", default="", metavar="FIXES",
                        help="start services through bench/whatif.py with these candidate fixes (e.g. runner-fetch)")
    parser.add_argument("--extra-wait", type=float, default=0.05, help="with --whatif runner-fetch: batch fetch wait")
    parser.add_argument("--profile", choices=["timer", "runner0", "history"],
                        help="py-spy record this service during the window (into bench/results/)")


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    pg = Postgres(args.database_url)
    results: list[dict[str, Any]] = []
    try:
        if args.ingest:
            results.append(await measure_ingest(args.ingest, args, pg))
        if args.runner_alone:
            results.append(await measure_runner_alone(args.runner_alone, args, pg))
        if not (args.ingest or args.runner_alone):
            for jobs in [int(s) for s in args.sizes.split(",") if s]:
                results.append(await measure(jobs, args, pg))
                log(f"n{jobs}: " + json.dumps(results[-1]))
    finally:
        pg.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--ingest", type=int, default=0, metavar="EVENTS", help="measure history ingest alone")
    parser.add_argument("--runner-alone", type=int, default=0, metavar="TRIGGERS", help="measure the runner alone")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = parser.parse_args()
    exit_on_signals()
    logging.getLogger("cropcron").setLevel(logging.ERROR)  # the bench's own connection closing is not news
    results = asyncio.run(amain(args))
    if args.json:
        for r in results:
            print(json.dumps(r), flush=True)
    elif args.ingest or args.runner_alone:
        for r in results:
            print(json.dumps(r, indent=1))
    else:
        print_table(HEADERS, [table_row(r) for r in results])
        print()
        print_table(DETAIL_HEADERS, [detail_row(r) for r in results])
    if args.profile:
        for path in sorted(RESULTS_DIR.glob(f"profile-{args.profile}-n*.txt")):
            print(summarize_profile(path))


if __name__ == "__main__":
    main()
