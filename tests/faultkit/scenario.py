"""One fault scenario from start to verdict: start a fresh system under load, hurt one component
mid-job, heal it, keep the load on, cut off, wait until everything due up to the cut-off is on
record, stop the load, wait until nothing is in flight, then compare due / history / ledger."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from conftest import create_database, drop_database

from faultkit.check import TERMINAL, Due, Report, Row, check
from faultkit.load import FILE_JOB, FileDropper, Load, due_ticks, read_ledger
from faultkit.procs import Postgres, Proc
from faultkit.systems import HAS_PEER, Cluster, System, UpSystem
from shared.catalog import set_paused

log = logging.getLogger("faultkit")

COMPONENTS = ("broker", "postgres", "runner", "timer", "history", "notifier", "watcher", "dispatcher", "up")
FAULTS = ("kill", "stop", "restart")

# Where a repeated effect is what at-least-once delivery allows (docs/reliability.md explains each):
# the broker's record of an ack can be lost or come too late (killed, or frozen past ack_wait),
# and a frozen runner cannot tell the broker that the job it started has finished.
AT_LEAST_ONCE = {("broker", "kill"), ("broker", "stop"), ("broker", "restart"), ("runner", "stop"),
                 ("up", "stop")}


@dataclass(frozen=True)
class Scenario:
    component: str
    fault: str

    @property
    def name(self) -> str:
        return f"{self.component}-{self.fault}"

    @property
    def files(self) -> str:
        """Which side feeds the file job: the watcher detects dropped files, or (dispatcher) the
        harness announces them as an upload tool would, so no watcher runs."""
        return {"watcher": "watcher", "dispatcher": "dispatcher", "up": "watcher"}.get(self.component, "")

    @property
    def duplicates_allowed(self) -> bool:
        return (self.component, self.fault) in AT_LEAST_ONCE


ALL = [Scenario(c, f) for c in COMPONENTS for f in FAULTS]


@dataclass
class Timing:
    warmup: float = 5.0  # load before the fault (s)
    stall: float = 30.0  # SIGSTOP .. SIGCONT (s)
    down: float = 5.0  # SIGKILL .. start again, as systemd/compose would (s)
    after: float = 10.0  # load after the heal, before the cut-off (s)
    drain: float = 180.0  # deadline for everything due to be on record (s)
    phase: float = 0.25  # faults land this far into an interval, or later (guard), when every job is mid-run
    guard: float = 0.15  # ... that is: each running job has this long left before its effect, and
    # each job that made its effect has its outcome on record (a fault in between repeats the effect)
    ack_wait: float = 3.0  # CROPCRON_ACK_WAIT of every process (FAST_ENV's; the default is 30)


async def run(scenario: Scenario, load: Load, timing: Timing, workdir: Path, admin_url: str,
              postgres: Postgres | None = None) -> Report:
    """`admin_url`: a Postgres to create this scenario's database in; `postgres`: that server as a
    process the harness owns (needed by the postgres scenarios, which hurt it)."""
    began = time.monotonic()
    if scenario.files and not load.files_per_second:
        load = Load(load.jobs, load.interval, load.job_seconds, files_per_second=2.0)
    elif not scenario.files:
        load = Load(load.jobs, load.interval, load.job_seconds)
    db_url = await create_database(admin_url, "cc_fault")
    env = {"CROPCRON_ACK_WAIT": f"{timing.ack_wait:g}"}
    system: System = (UpSystem(workdir, load, db_url, env) if scenario.component == "up"
                      else Cluster(workdir, load, db_url, env, postgres, scenario.files))
    try:
        report = await _run(system, scenario, load, timing)
    finally:
        await system.close()
        await drop_database(admin_url, db_url)
    report.duration_s = round(time.monotonic() - began, 1)
    return report


async def _run(system: System, scenario: Scenario, load: Load, timing: Timing) -> Report:
    await system.start()
    await _wait_rows(system.db_url, "SELECT count(*) FROM runs WHERE state = 'succeeded'", load.jobs, 60,
                     "the first runs")
    t0 = time.time()
    notes: list[str] = []
    stop_files = asyncio.Event()
    dropper = None
    feeder = None
    if scenario.files:
        announce = await system.bus() if scenario.files == "dispatcher" else None
        dropper = FileDropper(system.root, load.files_per_second, load.interval, announce)
        feeder = asyncio.create_task(dropper.run(stop_files))
    try:
        await asyncio.sleep(timing.warmup)
        await _phase(load.interval, timing.phase)
        victim = await system.victim(scenario.component)
        mid_job = await _mid_job(system, load, timing.guard, 10.0)
        fault_at, heal_at = await _inject(system, victim, scenario, timing)
        log.info("%s: fault at %.3f, healed at %.3f", scenario.name, fault_at, heal_at)
        await asyncio.sleep(timing.after)
        cutoff = time.time()
    finally:
        stop_files.set()
        if feeder is not None:
            await feeder
    due = [Due(run_id, job, instant.timestamp()) for run_id, (job, instant) in due_ticks(load, t0, cutoff).items()]
    if dropper is not None:
        due += [Due(d.run_id, FILE_JOB, d.at) for d in dropper.drops]
    if not await _recorded(system.db_url, due, timing.drain):
        notes.append(f"not everything due was on record {timing.drain:g}s after the cut-off")
    await _stop_load(system, load)
    if not await _settled(system, 60):
        notes.append("runs still in flight 60s after the load stopped")
    rows = await _rows(system.db_url)
    served = {FILE_JOB} if scenario.component in ("watcher", "dispatcher") else None
    report = check(scenario.name, due, rows, read_ledger(system.ledger), fault_at, heal_at, served)
    report.anomalies += _unexpected(rows, due, load, t0, cutoff)
    report.notes += notes
    report.mid_job = mid_job
    return report


async def _phase(interval: float, phase: float) -> None:
    """Sleep until `phase` seconds after the next instant of the interval schedule."""
    now = time.time()
    target = (now // interval) * interval + phase
    while target <= now + 0.05:
        target += interval
    await asyncio.sleep(target - now)


async def _mid_job(system: System, load: Load, guard: float, limit: float) -> bool:
    """Wait (at most `limit` s) for a moment when no job is near or past its effect without its
    outcome on record: every running job has `guard` s left, and every run that wrote its effect
    has its terminal row in history. A fault then lands on jobs mid-run, which is what the
    scenarios test; a fault between a job's effect and its report repeats the effect (at-least-
    once, docs/reliability.md), and under load, jobs can run late enough to be there at any phase."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = time.time()
        lines = [line for line in read_ledger(system.ledger) if line.at > now - 10]
        ended = {(line.run_id, line.pid) for line in lines if line.kind == "end"}
        near = [line for line in lines if line.kind == "start" and (line.run_id, line.pid) not in ended
                and line.at + load.job_seconds - now < guard]
        effects = list({line.run_id for line in lines if line.kind == "end"})
        if not near:
            done = await _query(system.db_url, "SELECT count(*) FROM runs WHERE run_id = ANY($1::text[]) AND "
                                               "state = ANY($2::text[])", effects, list(TERMINAL))
            if done and done[0][0] == len(effects) and time.time() - now < guard / 2:
                return True
        await asyncio.sleep(0.02)
    return False


async def _inject(system: System, victim: Proc, scenario: Scenario, timing: Timing) -> tuple[float, float]:
    fault_at = time.time()
    if scenario.fault == "kill":
        await asyncio.to_thread(victim.kill)
        # with a peer (a second runner, a standby timer) the system heals itself at once; the
        # killed process still comes back, as systemd or compose would start it
        heal_at = fault_at if scenario.component in HAS_PEER else 0.0
        await asyncio.sleep(timing.down)
        victim.start()
        heal_at = heal_at or time.time()
    elif scenario.fault == "stop":
        victim.pause()
        await asyncio.sleep(timing.stall)
        victim.resume()
        heal_at = time.time()
    else:
        await asyncio.to_thread(victim.terminate)
        victim.start()
        heal_at = time.time()
    await system.wait_live(victim, 120)
    return fault_at, heal_at


async def _query(db_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    try:
        conn = await asyncpg.connect(db_url, timeout=5)
    except Exception:
        return []  # Postgres restarting: ask again
    try:
        return list(await conn.fetch(sql, *args))
    except asyncpg.UndefinedTableError:
        return []  # history has not migrated yet
    finally:
        await conn.close()


async def _wait_rows(db_url: str, sql: str, at_least: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await _query(db_url, sql)
        if rows and rows[0][0] >= at_least:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _recorded(db_url: str, due: list[Due], timeout: float) -> bool:
    """Until every due run has a terminal row; False at the deadline (the rest count as lost)."""
    ids = [d.run_id for d in due]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await _query(db_url, "SELECT count(*) FROM runs WHERE run_id = ANY($1::text[]) "
                                    "AND state = ANY($2::text[])", ids, list(TERMINAL))
        if rows and rows[0][0] >= len(ids):
            return True
        await asyncio.sleep(0.5)
    return False


async def _stop_load(system: System, load: Load) -> None:
    """Pause the interval jobs (the file drops have stopped already)."""
    js = (await system.bus()).js
    for job in load.tick_jobs():
        await set_paused(js, job, True)


async def _settled(system: System, timeout: float) -> bool:
    """Nothing in flight: the consumers are idle and every job process that started has ended
    (a frozen runner's late copy must have written its effect before the ledger is read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await system.quiet() and not _running_jobs(system.ledger):
            return True
        await asyncio.sleep(0.5)
    return False


def _running_jobs(ledger: Path) -> list[int]:
    lines = read_ledger(ledger)
    ended = {(line.run_id, line.pid) for line in lines if line.kind == "end"}
    out = []
    for line in lines:
        if line.kind == "start" and (line.run_id, line.pid) not in ended:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(line.pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(line.pid)
    return out


async def _rows(db_url: str) -> list[Row]:
    records = await _query(db_url, "SELECT run_id, job, state, attempt, reason, scheduled_at, finished_at, "
                                   "updated_at, created_at FROM runs")
    return [Row(r["run_id"], r["job"], r["state"], r["attempt"], r["reason"], r["scheduled_at"], r["finished_at"],
                r["updated_at"], r["created_at"]) for r in records]


def _unexpected(rows: list[Row], due: list[Due], load: Load, t0: float, cutoff: float) -> list[str]:
    """History rows inside the window that nothing caused (an instant off the schedule, a file run
    for no dropped file)."""
    due_ids = {d.run_id for d in due}
    ticks = set(load.tick_jobs())
    out = []
    for row in rows:
        if row.run_id in due_ids:
            continue
        in_window = row.job == FILE_JOB or (row.job in ticks and row.scheduled_at is not None
                                            and t0 < row.scheduled_at.timestamp() <= cutoff)
        if in_window:
            out.append(f"{row.run_id} {row.job}: {row.state} in history, but nothing was due")
    return out
