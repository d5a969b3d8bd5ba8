"""cropcron on a three-node JetStream cluster (issue 13, docs/scale-out.md): every stream, consumer
and bucket at three replicas; services as separate processes, each connected to a different node
first; node deaths under load lose nothing.

The load is 30 interval jobs every second (the issue's 200 jobs/s is for a real farm server; this
2-core CI machine runs three nats-servers, six service processes, Postgres and 30 job processes a
second with room to spare, the other xdist worker's tests beside them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit.cluster_run import QuorumWatch, leaders_die, quorum_lost, run_cluster
from faultkit.load import Load

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
