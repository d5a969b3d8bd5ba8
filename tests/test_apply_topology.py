"""`cropcron apply` against a broker whose topology is half made (compose starts the one-shot
apply beside the services that create it): it creates what is missing and changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import nats.errors
import pytest
from conftest import NatsProcess
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.errors import ServiceUnavailableError
from test_config_apply import cli

from shared import wire
from shared.bus import connect
from shared.topology import await_topology

CONFIG = """
jobs:
  - {name: alpha, type: data_cleanup, interval: 1h, call: tests.jobs.calls:noop}
folder_watches:
  - {name: drops, path: drops}
notifications:
  channels: {journal: {type: log}}
  rules: [{when: [dead], channels: [journal]}]
"""


async def test_apply_creates_missing_topology_and_keeps_existing_settings(nats_server: NatsProcess,
                                                                          tmp_path: Path) -> None:
    bus = await connect(nats_server.url, "half")
    try:
        # what a service had created when it was interrupted: the jobs bucket and one consumer,
        # with an ack wait of its own
        await bus.js.create_key_value(KeyValueConfig(bucket=wire.KV_JOBS, history=1))
        await bus.js.add_stream(StreamConfig(name=wire.STREAM_TRIGGERS, subjects=[wire.TRIGGER_SUBJECTS]))
        await bus.js.add_consumer(wire.STREAM_TRIGGERS, ConsumerConfig(
            durable_name=wire.runner_consumer("high"), filter_subject="cropcron.trigger.high.>",
            ack_policy=AckPolicy.EXPLICIT, ack_wait=7))
        (tmp_path / "drops").mkdir()
        (tmp_path / "farm.yaml").write_text(CONFIG)
        out = cli(["apply", str(tmp_path / "farm.yaml")], nats_server.url, tmp_path)
        assert out.returncode == 0, out.stderr
        assert "1 added" in out.stdout
        for bucket in (wire.KV_JOBS, wire.KV_JOB_STATE, wire.KV_WATCHES, wire.KV_NOTIFY, wire.KV_SERVICES):
            await bus.js.key_value(bucket)  # raises BucketNotFoundError if apply left it out
        for stream, consumer in ((wire.STREAM_RUNS, wire.HISTORY_CONSUMER), (wire.STREAM_FILES, wire.DISPATCH_CONSUMER),
                                 (wire.STREAM_TRIGGERS, wire.runner_consumer("low"))):
            await bus.js.consumer_info(stream, consumer)
        kept = await bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer("high"))
        assert kept.config.ack_wait == 7, "apply must not change what the services set up"
        jobs = cli(["jobs", "--json"], nats_server.url, tmp_path)
        assert jobs.returncode == 0 and '"alpha"' in jobs.stdout, jobs.stderr
    finally:
        await bus.close()


async def test_a_service_waits_through_a_topology_that_does_not_answer_yet(caplog: pytest.LogCaptureFixture) -> None:
    """On a cluster, a stream or consumer just made answers nothing while its replicas elect a
    leader: the service keeps waiting (compose.cluster.yaml's runner exited 1 on that timeout),
    and a silence ends the round rather than waiting out a timeout per stream."""
    calls: list[str] = []

    class JS:
        async def stream_info(self, name: str) -> None:
            calls.append(name)
            if name == wire.STREAM_RUNS and calls.count(name) == 1:
                raise nats.errors.TimeoutError
            if name == wire.STREAM_ALERTS and calls.count(name) == 1:
                raise ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable")

        async def consumer_info(self, stream: str, name: str) -> None:
            calls.append(f"{stream}/{name}")
            if name == wire.HISTORY_CONSUMER and calls.count(f"{stream}/{name}") == 1:
                raise nats.errors.TimeoutError

    await asyncio.wait_for(await_topology(SimpleNamespace(js=JS()), "runner", every=0.01), 5)  # type: ignore[arg-type]
    assert "missing (no answer yet)" in caplog.text
    streams = [c for c in calls if "/" not in c]
    # each silence ended its round (nothing more asked in it), and the next round asked again
    assert streams[:3] == [wire.STREAM_TRIGGERS, wire.STREAM_RUNS, wire.STREAM_TRIGGERS], calls[:5]
    history = f"{wire.STREAM_RUNS}/{wire.HISTORY_CONSUMER}"
    assert calls.count(history) == 2  # silent once, then there


async def test_a_silence_longer_than_max_silence_is_raised() -> None:
    """A connection whose requests go unanswered for good ends the wait (the process exits and is
    restarted with a new one), not a service waiting forever."""
    class JS:
        async def stream_info(self, name: str) -> None:
            raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await asyncio.wait_for(await_topology(SimpleNamespace(js=JS()), "runner", every=0.01,  # type: ignore[arg-type]
                                              max_silence=0.1), 5)
