"""cropcron on a three-node JetStream cluster (issue 13, docs/scale-out.md): every stream, consumer
and bucket at three replicas; services as separate processes, each connected to a different node
first; node deaths under load lose nothing.

The load is 30 interval jobs every second (the issue's 200 jobs/s is for a real farm server; this
2-core CI machine runs three nats-servers, six service processes, Postgres and 30 job processes a
second with room to spare, the other xdist worker's tests beside them)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from faultkit.cluster_run import QuorumWatch, leaders_die, quorum_lost, run_cluster
from faultkit.load import Load

from cropcron.embedded import nats_server_binary
from shared.permissions import USERS

DOCKER_HERE_SOCKET = Path("/var/tmp/docker-here/docker.sock")
LOAD = Load(jobs=30, interval=1.0, job_seconds=0.2)


@pytest.mark.timeout(150)
async def test_node_deaths_lose_nothing(tmp_path: Path, pg_admin_url: str) -> None:
    """kill -9 the node leading the triggers stream, start it again; then the node leading the
    timer's lease bucket. Every instant due is on record, once; an effect may repeat only where a
    dead leader took an acknowledgement with it (at-least-once, explained in the message)."""
    result = await run_cluster(LOAD, tmp_path, pg_admin_url, leaders_die())
    summary = result.summary()
    print(summary)  # the figures, with -s
    report = result.report
    assert report.due > 0 and report.run > 0, summary
    assert report.lost == [], f"{summary}\nlost: {report.lost[:20]}"
    assert result.duplicate_rows == [], summary
    assert report.anomalies == [], f"{summary}\n{report.anomalies[:20]}"
    assert report.notes == [], f"{summary}\n{report.notes}"
    assert len(result.deaths) == 2, summary
    for death in result.deaths:
        assert death.new_leader != death.node, summary
        assert death.first_recorded_s is not None, summary


# every process reaches node 0 first, which stays up: the others die, and quorum with them
ON_NODE_0 = {"timer-a": (["timer"], 0), "timer-b": (["timer"], 0), "runner-a": (["runner"], 0),
             "history": (["history"], 0)}


@pytest.mark.timeout(150)
async def test_quorum_loss_is_reported_and_survived(tmp_path: Path, pg_admin_url: str) -> None:
    """Two of three nodes killed: the cluster stores nothing. Every service stays up, says so on
    /healthz (503, "JetStream unavailable") and in its log, and resumes by itself once the nodes
    are back; nothing due is lost (the instants of the outage run late or are reported missed,
    per job's catch-up policy)."""
    watch = QuorumWatch()
    result = await run_cluster(Load(jobs=6, interval=1.0, job_seconds=0.2), tmp_path, pg_admin_url,
                               quorum_lost(watch), layout=ON_NODE_0, env={"CROPCRON_JETSTREAM_CHECK": "0.5"})
    summary = f"{result.summary()}\n{watch}"
    print(summary)
    report = result.report
    assert sorted(watch.not_ready) == sorted(ON_NODE_0), summary
    assert sorted(watch.logged) == sorted(ON_NODE_0), summary
    assert watch.ready_again_s is not None, summary
    assert report.lost == [], f"{summary}\nlost: {report.lost[:20]}"
    assert result.duplicate_rows == [], summary
    assert report.anomalies == [], f"{summary}\n{report.anomalies[:20]}"
    assert report.notes == [], f"{summary}\n{report.notes}"


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
