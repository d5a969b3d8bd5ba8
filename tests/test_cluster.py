"""cropcron on a three-node JetStream cluster (issue 13, docs/scale-out.md): every stream, consumer
and bucket at three replicas; services as separate processes, each connected to a different node
first; node deaths under load lose nothing.

The load is 30 interval jobs every second (the issue's 200 jobs/s is for a real farm server; this
2-core CI machine runs three nats-servers, six service processes, Postgres and 30 job processes a
second with room to spare, the other xdist worker's tests beside them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, quiet_port, wait_for
from faultkit.cluster import ClusterSystem
from faultkit.cluster_run import QuorumWatch, in_turn, leaders_die, quorum_lost, run_cluster
from faultkit.load import Load

from cropcron.cli import main as cli_main
from cropcron.embedded import nats_server_binary
from cropcron.services import _check_replicas
from shared.bus import Bus
from shared.permissions import USERS
from shared.settings import BusSettings
from shared.topology import ReplicasError, ensure_topology, topology_names

DOCKER_HERE_SOCKET = Path("/var/tmp/docker-here/docker.sock")
LOAD = Load(jobs=30, interval=1.0, job_seconds=0.2)
# The production ack_wait (30 s), not the fault suite's 3 s: a stream's new leader is elected 4 to
# 9 s after the old one died (nats-server's raft election timeout), and a runner cannot report a
# run meanwhile; with a 3 s ack_wait every run in flight at a death was given out again and ran
# twice (about 30 duplicate effects per run of this test, before the runner's acks were confirmed).
# (The quorum_lost alert after 3 s, not 30: the test's outage is about 10 s.)
ENV = {"CROPCRON_ACK_WAIT": "30", "CROPCRON_JETSTREAM_CHECK": "0.5", "CROPCRON_QUORUM_ALERT_AFTER": "3"}


@pytest.mark.timeout(170)
async def test_node_deaths_and_a_lost_quorum_lose_nothing(tmp_path: Path, pg_admin_url: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`apply` makes the topology at one replica and the services, started with
    CROPCRON_REPLICAS=3, move it to three. Then, under load: kill -9 the node leading the triggers
    stream, start it again; the node leading the timer's lease bucket, likewise; then two of the
    three nodes at once (no quorum: every service says so on /healthz and in its log, and is ready
    again by itself once they are back). Every instant due is on record, once; an effect may
    repeat only where a dead leader took an acknowledgement with it (at-least-once, listed in the
    summary). Afterwards `cropcron replicas` shows the cluster and moves it back to one replica."""
    watch = QuorumWatch()
    listing: list[str] = []

    async def afterwards(system: ClusterSystem) -> None:
        listing.append(await _replicas_cli(system, capsys))

    result = await run_cluster(LOAD, tmp_path, pg_admin_url,
                               in_turn(leaders_die(between=1.0), quorum_lost(watch, down=5.0)), warmup=2.0,
                               apply_replicas=1, env=ENV, after=afterwards)
    summary = f"{result.summary()}\n{watch}"
    print(summary)  # the figures, with -s
    report = result.report
    assert report.due > 0 and report.run > 0, summary
    assert report.lost == [], f"{summary}\nlost: {report.lost[:20]}"
    assert result.duplicate_rows == [], summary
    assert report.anomalies == [], f"{summary}\n{report.anomalies[:20]}"
    assert report.notes == [], f"{summary}\n{report.notes}"
    leaders = [d for d in result.deaths if d.stream != "quorum"]
    assert len(leaders) == 2, summary
    for death in leaders:  # the others carried on: something due after the death ran
        assert death.first_recorded_s is not None, summary
    services = sorted(ClusterSystem.LAYOUT)
    assert sorted(watch.not_ready) == services, summary
    assert sorted(watch.logged) == services, summary
    assert watch.ready_again_s is not None, summary
    # told straight to the notifications channel (here the log), and its end too
    assert watch.alerted == ["NATS JetStream unavailable", "NATS JetStream available again"], summary
    assert listing and "CROPCRON_TRIGGERS" in listing[0], listing


async def _replicas_cli(system: ClusterSystem, capsys: pytest.CaptureFixture[str]) -> str:
    """At three replicas (the services moved it), as `cropcron replicas` lists it through a
    NATS_URL whose first server is down; then `cropcron replicas 1`; R5 is refused by name."""
    bus = await system.bus()
    assert set((await _counts(bus)).values()) == {3}

    async def consumers_follow() -> bool:  # consumers scale with their stream, a moment later
        for stream, name in topology_names()[1]:
            info = await bus.js.consumer_info(stream, name)
            if info.cluster is None or len(info.cluster.replicas or []) != 2:
                return False
        return True

    await wait_for(consumers_follow, 30, "every consumer at three replicas")
    url = f"nats://127.0.0.1:{quiet_port()},{system.cluster.url(1)}"
    code, listing = await asyncio.to_thread(_cli, ["replicas"], url, capsys)
    assert code == 0, listing
    code, out = await asyncio.to_thread(_cli, ["replicas", "5"], url, capsys)
    assert code == 2 and "CROPCRON_REPLICAS is 5" in out and "no suitable peers" in out, out
    code, out = await asyncio.to_thread(_cli, ["replicas", "1"], url, capsys)
    assert code == 0, out
    assert set((await _counts(bus)).values()) == {1}, out
    return listing


def _compose_config(tmp: Path) -> dict[str, Any]:
    """`docker compose -f compose.yaml -f compose.cluster.yaml config`, with stand-in secrets."""
    env = dict(os.environ)
    if not env.get("DOCKER_HOST") and DOCKER_HERE_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{DOCKER_HERE_SOCKET}"
    (tmp / "nats").mkdir(parents=True)
    for name in ("db_password.txt", "dashboard_token.txt", "slack_webhook.txt", "nats/auth.conf",
                 *(f"nats/{user}.password" for user in USERS)):
        (tmp / name).write_text("stand-in\n")
    env["CROPCRON_SECRETS_DIR"] = str(tmp)
    try:
        done = subprocess.run(["docker", "compose", "--profile", "cli", "-f", "compose.yaml", "-f", "compose.cluster.yaml", "config",
                               "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        done = None
    if done is None or "Cannot connect" in done.stderr or "command not found" in done.stderr:
        reason = "no docker compose" if done is None else done.stderr.strip()
        if os.environ.get("CI"):
            pytest.fail(f"docker compose is needed to check compose.cluster.yaml: {reason}")
        pytest.skip(f"no docker compose: {reason}")
    assert done.returncode == 0, done.stderr
    merged: dict[str, Any] = json.loads(done.stdout)
    return merged


def test_compose_cluster_file_merges_onto_compose_yaml(tmp_path: Path) -> None:
    """The override gives three routed nodes with their own stores, and every cropcron process
    the three of them and three replicas; its nats-server config is valid (the pinned binary's -t)."""
    merged = _compose_config(tmp_path / "secrets")
    services = merged["services"]
    nodes = ["nats", "nats-2", "nats-3"]
    assert {n: services[n]["image"] for n in nodes} == dict.fromkeys(nodes, "nats:2.15.1-alpine")
    stores = {services[n]["volumes"][0]["source"] for n in nodes}
    assert len(stores) == 3, stores
    assert {services[n]["environment"]["CROPCRON_NATS_NODE"] for n in nodes} == {"nats-1", "nats-2", "nats-3"}
    ours = [name for name, svc in services.items() if svc.get("image") == "cropcron:local"]
    assert {"timer", "runner", "history", "notifier", "watcher", "dashboard", "apply", "cli"} <= set(ours)
    for name in ours:
        env = services[name]["environment"]
        assert env["NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes], name
        assert env["CROPCRON_REPLICAS"] == "3", name
    assert services["timer"]["scale"] == 2 and services["runner"]["scale"] == 3
    conf = merged["configs"]["nats_conf"]["content"].replace("$$", "$")
    for node in nodes:
        assert f"nats-route://{node}:6222" in conf
    (tmp_path / "cropcron.conf").write_text(conf)
    (tmp_path / "auth.conf").write_text("")
    checked = subprocess.run([nats_server_binary(), "-c", str(tmp_path / "cropcron.conf"), "-t"],
                             env={**os.environ, "CROPCRON_NATS_NODE": "nats-2"}, capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0 and "is valid" in checked.stdout + checked.stderr, checked.stderr


def _cli(args: list[str], url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NATS_URL", url)
        for name in ("CROPCRON_NATS_USER", "CROPCRON_NATS_PASSWORD_FILE", "CROPCRON_REPLICAS"):
            mp.delenv(name, raising=False)
        code = cli_main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def _counts(bus: Bus) -> dict[str, int]:
    streams, _ = topology_names()
    return {s: (await bus.js.stream_info(s)).config.num_replicas or 1 for s in streams}


async def test_replicas_more_than_one_server_keeps_is_a_clear_error(
        bus: Bus, nats_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ReplicasError, match="CROPCRON_REPLICAS is 3 .* single nats-server keeps 1"):
        await ensure_topology(bus.js, BusSettings(replicas=3))
    await ensure_topology(bus.js, BusSettings())
    code, out = await asyncio.to_thread(_cli, ["replicas", "3"], nats_server.url, capsys)
    assert code == 2 and "CROPCRON_REPLICAS is 3" in out and "non-clustered" in out, out
    assert set((await _counts(bus)).values()) == {1}  # nothing half-changed


def test_a_bad_nats_url_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(["jobs"], "nats://127.0.0.1:4222,,not a url", capsys)
    assert code == 2 and "'not a url', which is not a server address" in out, out


async def test_a_service_user_is_told_the_replica_count_differs(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    """A service connected as its own broker user cannot change the topology: it starts, and says
    what to run."""
    await ensure_topology(bus.js, BusSettings())
    await _check_replicas(bus, BusSettings(replicas=3), "runner")
    assert "CROPCRON_REPLICAS is 3 but the streams have 1 copies; NATS user runner may not change that: run " \
           "`cropcron replicas 3` as the operator" in caplog.text
