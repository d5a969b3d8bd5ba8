"""compose.cluster.yaml brought up for real, in Docker (issue 13): three NATS nodes, every stream
and bucket at three replicas, two timers, three runners, two history and two notifier processes,
with compose.test.yaml and compose.cluster.test.yaml on top (host networking: each node on its own
loopback ports). Then one node is killed (`docker compose kill`, the one leading the triggers
stream) while a job runs every second: no instant may be lost or run twice, and the node, started
again, catches up. One stack for the module; the tests run in order.

Docker as for tests/test_compose.py (compose_kit.py). Timings (up, node kill to the next run in
history, the node's return) are printed and written to test-output/compose-cluster-timings.json.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from compose_kit import Stack, compose_stack
from conftest import figure, wait_for

from shared import wire
from shared.topology import topology_names

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

TIMINGS: dict[str, float] = {}

CONFIG = """
system: {timezone: UTC}
jobs:
  - name: tick                      # every second: a node's death falls between instants
    type: folder_monitoring
    schedule: "* * * * * *"
    overlap: allow
    catchup: all                    # instants due while the triggers stream elects a leader run late
    catchup_window: 10m
    max_retries: 3
    retry_delay: 1s
    timeout: 30s
    run: ["{python}", jobs/probe.py, data/ticks.jsonl, "{run_id}", "{attempt}", "{scheduled_at}"]
"""

NODES = {"nats-1": "nats", "nats-2": "nats-2", "nats-3": "nats-3"}  # server_name -> compose service
# each node's client, monitoring and route ports: the variables compose.test.yaml and
# compose.cluster.test.yaml read
PORTS = {"nats": "CROPCRON_TEST_NATS_PORT", "nats_monitor": "CROPCRON_TEST_NATS_MONITOR_PORT",
         "nats_1_cluster": "CROPCRON_TEST_NATS_1_CLUSTER_PORT",
         **{f"nats_{n}{part}": f"CROPCRON_TEST_NATS_{n}{part.upper()}_PORT"
            for n in (2, 3) for part in ("", "_monitor", "_cluster")},
         "pg": "CROPCRON_TEST_PG_PORT", "dashboard": "CROPCRON_TEST_DASHBOARD_PORT"}
FILES = ("compose.yaml", "compose.cluster.yaml", "compose.test.yaml", "compose.cluster.test.yaml")
# each stream and bucket: (replicas, leader, [(peer, current)])
Placement = dict[str, tuple[int, str | None, list[tuple[str, bool]]]]
# compose.cluster.yaml's layout: containers per long-running service
LAYOUT = {"nats": 1, "nats-2": 1, "nats-3": 1, "postgres": 1, "timer": 2, "runner": 3, "history": 2, "notifier": 2,
          "watcher": 1, "dashboard": 1, "apply": 1}


def _report(request: pytest.FixtureRequest, line: str) -> None:
    figure(request, f"[compose cluster] {line}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with compose_stack(tmp_path_factory.mktemp("cluster"), request, name="compose-cluster", config=CONFIG,
                       files=FILES, port_env=PORTS, timings=TIMINGS, label="compose cluster") as s:
        yield s


@pytest.fixture(autouse=True)
async def _bus_per_test(cluster: Stack) -> Any:
    """Each test has its own event loop: the host-side NATS connection lives and dies with it."""
    yield
    await cluster.close_bus()


def _monitor_port(stack: Stack, service: str) -> int:
    return stack.ports["nats_monitor" if service == "nats" else f"nats_{service[-1]}_monitor"]


async def _placement(stack: Stack) -> Placement | None:
    """Where each stream's copies are, or None while the broker cannot say (a leader being
    elected)."""
    try:
        bus = await stack.connect()
        out = {}
        for name in topology_names()[0]:
            info = await bus.js.stream_info(name)
            cluster = info.cluster
            peers = [(p.name, bool(p.current) and not p.offline) for p in (cluster.replicas or [])] if cluster else []
            out[name] = (info.config.num_replicas or 1, cluster.leader if cluster else None, peers)
        return out
    except Exception:
        await stack.close_bus()
        return None


async def _all_current(stack: Stack) -> Placement | None:
    """The placement once every stream and bucket has three replicas, a leader, and its two
    other copies current."""
    placement = await _placement(stack)
    if placement is None:
        return None
    for replicas, leader, peers in placement.values():
        if replicas != 3 or leader not in NODES or len(peers) != 2 or not all(ok for _, ok in peers):
            return None
    return placement


async def _wait_current(stack: Stack, what: str) -> Placement:
    try:
        found: Placement = await wait_for(lambda: _all_current(stack), 60, what, every=1)
    except AssertionError as exc:  # say where the copies are
        raise AssertionError(f"{exc}\nplacement (replicas, leader, [(peer, current)]): "
                             f"{await _placement(stack)}") from None
    return found


def test_every_service_of_the_cluster_layout_is_healthy(cluster: Stack) -> None:
    rows = list(cluster.services().values())
    for service, count in LAYOUT.items():
        found = [r for r in rows if r["Service"] == service]
        assert len(found) == count, f"{service}: {len(found)} containers, not {count}: {[r['Name'] for r in rows]}"
        for row in found:
            assert row["State"] == "running" and row["Health"] == "healthy", (service, row["Status"])


async def test_every_stream_is_on_the_three_nodes_and_runs_reach_history(cluster: Stack,
                                                                         request: pytest.FixtureRequest) -> None:
    placement = await _wait_current(cluster, "every stream at 3 replicas, 2 of them current")
    leaders = Counter(leader for _, leader, _ in placement.values())
    # as the operator sees it (`docker compose run --rm cli replicas`): the same three copies
    listed = {r["stream"]: r for r in cluster.cli("replicas")}
    assert set(listed) == set(placement), listed
    for row in listed.values():
        assert row["replicas"] == 3 and row["leader"] in NODES, row
        assert sorted(row["peers"].split(", ")) == sorted(n for n in NODES if n != row["leader"]), row
    await wait_for(lambda: cluster.runs("tick", "succeeded"), 60, "a succeeded tick in history")
    TIMINGS["first_run_s"] = time.time() - TIMINGS["up_done_at"]

    async def roles() -> dict[str, list[str]] | None:  # one timer and one notifier lead, the others stand by
        got = {service: sorted(str(b.get("role")) for b in await cluster.beats(service) if b)
               for service in ("timer", "notifier", "runner")}
        want = {"timer": ["leader", "standby"], "notifier": ["active", "standby"]}
        return got if all(got[k] == v for k, v in want.items()) and len(got["runner"]) == 3 else None

    await wait_for(roles, 30, "two timers (leader, standby), two notifiers (active, standby), three runners", every=1)
    _report(request, f"{len(placement)} streams and buckets at 3 replicas (leaders: "
                     f"{', '.join(f'{n} {c}' for n, c in sorted(leaders.items()))}); first run in history "
                     f"{TIMINGS['first_run_s']:.1f} s after the stack was up")


def _seconds(start: datetime, end: datetime) -> set[datetime]:
    """The tick job's instants (every whole second) in [start, end]."""
    at = start.replace(microsecond=0) + (timedelta(seconds=1) if start.microsecond else timedelta())
    out = set()
    while at <= end:
        out.add(at)
        at += timedelta(seconds=1)
    return out


async def test_a_killed_node_loses_no_run(cluster: Stack, request: pytest.FixtureRequest) -> None:
    """`docker compose kill` the node leading CROPCRON_TRIGGERS: the other two elect a leader, the
    processes connected to it move to the next node of their NATS_URL, and the job runs on; every
    second from before the kill to after the node's return succeeds in history, once (one run id,
    one execution). Started again, the node catches up and every copy is current again."""
    placement = await _wait_current(cluster, "every stream current before the kill")
    victim = NODES[placement[wire.STREAM_TRIGGERS][1] or ""]
    start = datetime.now(UTC)
    killed_at = datetime.now(UTC)
    began = time.monotonic()
    cluster.compose("kill", victim, timeout=60)
    await cluster.close_bus()
    state = {r["Service"]: r["State"] for r in cluster.services().values()}
    assert state[victim] == "exited", f"{victim} was not killed (or was restarted): {state}"

    async def ran_after_kill() -> list[dict[str, Any]] | None:
        rows = [r for r in await cluster.runs("tick", "succeeded", since=killed_at - timedelta(seconds=5))
                if datetime.fromisoformat(r["scheduled_at"]) > killed_at]
        return rows or None

    # (5 to 8 s here; 30 s once, on a machine loaded by other benchmarks)
    await wait_for(ran_after_kill, 90, f"a run due after {victim} was killed, in history", every=0.5)
    TIMINGS["kill_to_next_run_s"] = time.monotonic() - began
    # and the runs go on with the node still down: one due a few seconds after that one
    resumed_at = datetime.now(UTC)

    async def went_on() -> bool:
        rows = await cluster.runs("tick", "succeeded", since=resumed_at - timedelta(seconds=5))
        return any(datetime.fromisoformat(r["scheduled_at"]) >= resumed_at + timedelta(seconds=2) for r in rows)

    await wait_for(went_on, 30, f"runs going on with {victim} down", every=0.5)
    TIMINGS["node_down_s"] = time.monotonic() - began

    began = time.monotonic()
    cluster.compose("start", victim, timeout=60)
    url = f"http://127.0.0.1:{_monitor_port(cluster, victim)}/healthz"

    async def node_ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(node_ready, 60, f"{victim}'s /healthz after its start", every=0.5)
    await _wait_current(cluster, f"every copy current again with {victim} back")
    TIMINGS["node_back_current_s"] = time.monotonic() - began

    end = datetime.now(UTC) + timedelta(seconds=2)
    expected = _seconds(start, end)

    async def complete() -> list[dict[str, Any]] | None:
        rows = [r for r in await cluster.runs("tick", since=start - timedelta(seconds=60))
                if datetime.fromisoformat(r["scheduled_at"]) in expected]
        done = {datetime.fromisoformat(r["scheduled_at"]) for r in rows if r["state"] == "succeeded"}
        return rows if expected <= done else None

    rows: list[dict[str, Any]] = await wait_for(complete, 90, f"every second from {start} to {end} succeeded",
                                                every=1)
    per_instant = Counter(r["scheduled_at"] for r in rows)
    assert max(per_instant.values()) == 1, f"instants under two run ids: {[i for i, n in per_instant.items() if n > 1]}"
    ids = {r["run_id"] for r in rows}
    executions = Counter(e["run_id"] for e in cluster.ledger("ticks.jsonl") if e["run_id"] in ids)
    assert set(executions) == ids, f"runs in history that the ledger lacks: {sorted(ids - set(executions))[:5]}"
    twice = sorted((n, i) for i, n in executions.items() if n > 1)
    assert twice == [], f"runs executed more than once: {twice}"
    attempts = Counter(r.get("attempt") for r in rows)
    late = max((datetime.fromisoformat(r["started_at"]) - datetime.fromisoformat(r["scheduled_at"])).total_seconds()
               for r in rows)
    _report(request, f"{victim} (the triggers stream's leader) killed: next run in history "
                     f"{TIMINGS['kill_to_next_run_s']:.1f} s later; the node down "
                     f"{TIMINGS['node_down_s']:.1f} s, back and every copy current "
                     f"{TIMINGS['node_back_current_s']:.1f} s after its start; {len(expected)} instants, "
                     f"each once, none lost (attempts {dict(attempts)}, the latest started {late:.1f} s late)")
