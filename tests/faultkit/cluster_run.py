"""Node deaths on a three-node cluster under load (issue 13 part 4): kill -9 the node that leads the
triggers stream, start it again, then the node that leads the timer's lease bucket (leaders_die);
two nodes at once, so that the cluster loses its quorum, watching each service's /healthz and log
(quorum_lost); then due / history / ledger compared as in the fault suite (faultkit.check), with
the time from each death to the first run after it. Used by tests/test_cluster.py and
bench/cluster.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from conftest import create_database, drop_database

from faultkit.check import Due, Report, Row, check
from faultkit.cluster import ClusterSystem, leader_of
from faultkit.load import Load, due_ticks, read_ledger
from faultkit.scenario import (
    _recorded,
    _rows,
    _settled,
    _stop_load,
    _unexpected,
    _wait_rows,
)
from shared import wire
from shared.bus import Bus
from shared.health import instance_key

# the streams whose leading node is killed, one after the other
VICTIMS = (wire.STREAM_TRIGGERS, f"KV_{wire.KV_TIMER}")


@dataclass
class NodeDeath:
    stream: str  # the stream the node led
    node: str
    at: float  # kill -9 (epoch seconds)
    back_at: float = 0.0  # started again
    new_leader: str = ""  # once it is back (it may lead again, if it caught up first)
    first_start_s: float | None = None  # death -> first job start of an instant due after it
    first_recorded_s: float | None = None  # death -> first success of such an instant on record


@dataclass
class ClusterReport:
    report: Report
    deaths: list[NodeDeath] = field(default_factory=list)
    duplicate_rows: list[str] = field(default_factory=list)  # one instant recorded under two run ids
    runs_per_second: float = 0.0  # runs due in the window and succeeded on record by its end, per second
    phases: dict[str, float] = field(default_factory=dict)  # seconds from the start to the end of each
    window_s: float = 1.0  # the load's window: from after the first runs to the cut-off
    late: list[float] = field(default_factory=list)  # job start - instant, sorted (first attempts before any death)

    def summary(self) -> str:
        r = self.report
        lines = [f"due {r.due}, run {r.run}, not run {r.not_run}, lost {len(r.lost)}, duplicate history rows "
                 f"{len(self.duplicate_rows)}, duplicate effects {r.duplicate_effects}, re-executed {r.rerun}, "
                 f"anomalies {len(r.anomalies)}, {self.runs_per_second:.1f} runs/s recorded; phases {self.phases}"]
        for d in self.deaths:
            what = "(the quorum)" if d.stream == "quorum" else f"(leader of {d.stream}; then {d.new_leader})"
            lines.append(f"killed {d.node} {what} at +{d.at - r.fault_at:.1f}s, back after "
                         f"{d.back_at - d.at:.1f}s: first job start after "
                         f"{d.first_start_s}s, first success on record after {d.first_recorded_s}s")
        lines += [f"duplicate: {text}" for text in r.duplicates]
        return "\n".join(lines)


async def caught_up(bus: Bus, streams: list[str], timeout: float = 60) -> None:
    """Until every replica of `streams` is current (a restarted node has caught up): a second kill
    before that would leave a stream without a current majority for a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            infos = [await bus.js.stream_info(s) for s in streams]
            if all(i.cluster and i.cluster.leader and all(p.current and not p.offline for p in i.cluster.replicas or [])
                   and len(i.cluster.replicas or []) >= 2 for i in infos):
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"the replicas of {streams} did not catch up within {timeout}s")


async def _kill_leader(system: ClusterSystem, stream: str, down: float) -> NodeDeath:
    bus = await system.bus()
    await caught_up(bus, list(VICTIMS))
    node = system.cluster.node(await leader_of(bus, stream))
    death = NodeDeath(stream, node.name, time.time())
    await asyncio.to_thread(node.kill)
    # started again after `down` s, as systemd or compose would, whether or not the others have
    # elected a new leader yet (that takes 4 to 9 s)
    await asyncio.sleep(max(0.0, death.at + down - time.time()))
    node.start()
    await asyncio.to_thread(node.wait_listening)
    death.back_at = time.time()
    death.new_leader = await leader_of(bus, stream, 30)
    return death


def _first_after(deaths: list[NodeDeath], due: list[Due], system: ClusterSystem, report_rows: list[Row]) -> None:
    at = {d.run_id: d.at for d in due}
    starts = [(line.at, at[line.run_id]) for line in read_ledger(system.ledger)
              if line.kind == "start" and line.run_id in at]
    done = [(row.recorded_at(), at[row.run_id]) for row in report_rows
            if row.run_id in at and row.state == "succeeded"]
    for d in deaths:
        s = [t for t, instant in starts if instant >= d.at and t >= d.at]
        r = [t for t, instant in done if instant >= d.at]
        d.first_start_s = round(min(s) - d.at, 2) if s else None
        d.first_recorded_s = round(min(r) - d.at, 2) if r else None


Fault = Callable[[ClusterSystem], Awaitable[list[NodeDeath]]]


def leaders_die(kills: tuple[str, ...] = VICTIMS, down: float = 3.0, between: float = 2.0) -> Fault:
    """kill -9 the node leading each stream of `kills` in turn, start it again after `down` s."""
    async def fault(system: ClusterSystem) -> list[NodeDeath]:
        deaths = []
        for stream in kills:
            deaths.append(await _kill_leader(system, stream, down))
            await asyncio.sleep(between)
        return deaths
    return fault


def in_turn(*faults: Fault) -> Fault:
    async def fault(system: ClusterSystem) -> list[NodeDeath]:
        deaths = []
        for each in faults:
            deaths += await each(system)
        return deaths
    return fault


async def run_cluster(load: Load, workdir: Path, admin_url: str, fault: Fault, *, warmup: float = 3.0,
                      drain: float = 90.0, env: dict[str, str] | None = None, size: int = 3,
                      layout: dict[str, tuple[list[str], int]] | None = None,
                      apply_replicas: int | None = None,
                      after: Callable[[ClusterSystem], Awaitable[None]] | None = None,
                      sync: str = "always") -> ClusterReport:
    """`after`: called once the checks are done, on the system still running. `sync`: the nodes'
    JetStream sync_interval."""
    db_url = await create_database(admin_url, "cc_cluster")
    system = ClusterSystem(workdir, load, db_url, env or {}, size=size, sync=sync, layout=layout,
                           apply_replicas=apply_replicas)
    try:
        result = await _run(system, load, warmup, drain, fault)
        if after is not None:
            await after(system)
        return result
    finally:
        await system.close()
        await drop_database(admin_url, db_url)


async def _run(system: ClusterSystem, load: Load, warmup: float, drain: float, fault: Fault) -> ClusterReport:
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    await system.start()
    phase("started")
    await _wait_rows(system.db_url, "SELECT count(*) FROM runs WHERE state = 'succeeded'", load.jobs, 60,
                     "the first runs")
    phase("first runs")
    t0 = time.time()
    await asyncio.sleep(warmup)
    deaths = await fault(system)
    phase("faults")
    cutoff = time.time()
    due = [Due(run_id, job, instant.timestamp()) for run_id, (job, instant) in due_ticks(load, t0, cutoff).items()]
    notes = [] if await _recorded(system.db_url, due, drain) else [f"not everything due was on record {drain:g}s "
                                                                       "after the cut-off"]
    await _stop_load(system, load)
    phase("recorded")
    if not await _settled(system, 60):
        notes.append("runs still in flight 60s after the load stopped")
    phase("settled")
    rows = await _rows(system.db_url)
    fault_at = deaths[0].at if deaths else cutoff
    # a node's death heals itself (another node leads at once), as a killed runner with a peer
    report = check("cluster-node-deaths", due, rows, read_ledger(system.ledger), fault_at, fault_at)
    report.anomalies += _unexpected(rows, due, load, t0, cutoff)
    report.notes += notes
    _first_after(deaths, due, system, rows)
    instants = Counter((row.job, row.scheduled_at) for row in rows if row.scheduled_at is not None)
    duplicate_rows = [f"{job} at {when}: {n} rows" for (job, when), n in instants.items() if n > 1]
    # runs due in the window and on record by its end: what the system carried, per second
    due_ids = {d.run_id for d in due}
    in_window = [row for row in rows if row.run_id in due_ids and row.state == "succeeded"
                 and row.recorded_at() <= cutoff]
    at = {d.run_id: d.at for d in due}
    late = sorted(line.at - at[line.run_id] for line in read_ledger(system.ledger)
                  if line.kind == "start" and line.attempt == 1 and line.run_id in at and line.at < fault_at)
    window = max(cutoff - t0, 1e-9)
    return ClusterReport(report, deaths, duplicate_rows, round(len(in_window) / window, 1), phases, window, late)


@dataclass
class QuorumWatch:
    """What the services said while the cluster had no quorum."""

    not_ready: dict[str, str] = field(default_factory=dict)  # service -> /healthz's reason
    logged: list[str] = field(default_factory=list)  # services whose log says JetStream is unavailable
    ready_again_s: float | None = None  # nodes back -> every /healthz ready
    alerted: list[str] = field(default_factory=list)  # the notifier's log channel: quorum_lost firing, resolved


async def _healthz(url: str) -> tuple[int, dict[str, object]]:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(url)
        return response.status_code, response.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


async def _health_urls(system: ClusterSystem) -> dict[str, str]:
    kv = await (await system.bus()).js.key_value(wire.KV_SERVICES)
    out = {}
    for name, proc in system.services.items():
        beat = json.loads((await kv.get(instance_key(proc.names[0], proc.instance))).value or b"{}")
        out[name] = str(beat["metrics_url"]).replace("/metrics", "/healthz")
    return out


def quorum_lost(watch: QuorumWatch, down: float = 6.0) -> Fault:
    """kill -9 every node but the first: the cluster has no quorum; each service (reconnected to
    the first node if it was on another) must say so on /healthz and in its log; after `down` s
    the nodes come back and every /healthz must be ready again by itself."""
    async def fault(system: ClusterSystem) -> list[NodeDeath]:
        urls = await _health_urls(system)
        await caught_up(await system.bus(), list(VICTIMS))
        logs = {name: system.logdir / f"{name}.log" for name in urls}
        offsets = {name: log.stat().st_size for name, log in logs.items()}  # earlier faults said it too
        victims = system.cluster.nodes[1:]
        death = NodeDeath("quorum", "+".join(n.name for n in victims), time.time())
        for node in victims:
            await asyncio.to_thread(node.kill)
        deadline = time.monotonic() + 30
        while len(watch.not_ready) < len(urls) and time.monotonic() < deadline:
            for name, url in urls.items():
                status, body = await _healthz(url)
                if status == 503 and "unavailable" in json.dumps(body.get("not_ready")):
                    watch.not_ready[name] = json.dumps(body["not_ready"])
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, death.at + down - time.time()))
        for node in victims:
            node.start()
        for node in victims:
            await asyncio.to_thread(node.wait_listening)
        death.back_at = time.time()
        watch.logged = [name for name, log in logs.items()
                        if b"JetStream is not available" in log.read_bytes()[offsets[name]:]]
        pending = dict(urls)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for name, url in list(pending.items()):
                if (await _healthz(url))[0] == 200:
                    del pending[name]
            await asyncio.sleep(0.2)
        if not pending:
            watch.ready_again_s = round(time.time() - death.back_at, 1)
        # the quorum_lost alert, sent by the notifier's process straight to the log channel
        said = logs["notifier"].read_bytes()[offsets["notifier"]:].decode(errors="replace") if "notifier" in logs else ""
        watch.alerted = [what for what in ("NATS JetStream unavailable", "NATS JetStream available again")
                         if what in said]
        await asyncio.sleep(2)  # a little load after it, before the cut-off
        return [death]
    return fault
