"""The runner's Settler (services/runner/settle.py) on a real nats-server: runs ending together are
stored and settled in shared rounds; every trigger is settled only after its events are stored;
a run whose event cannot be stored leaves the round without holding up the others. And the
runner's side: a run gives its slot on when its job ends, with unsettled runs bounded."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from conftest import apply_yaml, in_process_runner, wait_for
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamInfo

from services.runner.service import RunnerService
from services.runner.settle import Action, Settler
from shared import wire
from shared.bus import Bus
from shared.events import Trigger

JOB = "settle-job"


async def _triggers(bus: Bus, count: int) -> list[Msg]:
    for i in range(count):
        await bus.js.publish(wire.trigger_subject("normal", JOB), f"t{i}".encode())
    psub = await bus.js.pull_subscribe_bind(durable=wire.runner_consumer("normal"), stream=wire.STREAM_TRIGGERS)
    msgs: list[Msg] = []
    while len(msgs) < count:
        msgs += await psub.fetch(count - len(msgs), timeout=5)
    return msgs


@contextlib.asynccontextmanager
async def _settling(bus: Bus, stop: asyncio.Event) -> AsyncIterator[Settler]:
    """A started Settler with its rounds running, closed afterwards."""
    settler = Settler(bus, ack_wait=3, stop=stop)
    await settler.start()
    rounds = asyncio.create_task(settler.run())
    try:
        yield settler
    finally:
        rounds.cancel()
        await settler.close()


def _event(i: int) -> tuple[str, bytes, str]:
    return wire.run_event_subject(JOB, "succeeded"), f'{{"i": {i}}}'.encode(), f"settle-test.{i}"


async def _runs_stored(bus: Bus) -> int:
    info: StreamInfo = await bus.js.stream_info(wire.STREAM_RUNS, subjects_filter=wire.run_event_subject(JOB, ">"))
    return info.state.messages


async def test_runs_ending_together_share_rounds_and_each_trigger_is_settled_once_stored(bus: Bus) -> None:
    msgs = await _triggers(bus, 60)
    actions: list[Action] = ["ack"] * 58 + ["nak", "term"]
    async with _settling(bus, asyncio.Event()) as settler:
        await asyncio.wait_for(asyncio.gather(*(
            settler.settle(msg, [_event(i)], action, 0.3, f"run {i}")
            for i, (msg, action) in enumerate(zip(msgs, actions, strict=True)))), 10)
        # every event stored before its trigger was settled, and the 60 came in a few rounds
        assert await _runs_stored(bus) == 60
        assert settler.settled == 60
        assert settler.rounds < 10, f"60 runs ending together took {settler.rounds} rounds"
        info = await bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer("normal"))
        assert info.num_ack_pending == 1  # the nak'd one, waiting out its 0.3 s
        # the nak'd trigger comes back (a retry), the acked and termed ones never do
        psub = await bus.js.pull_subscribe_bind(durable=wire.runner_consumer("normal"), stream=wire.STREAM_TRIGGERS)
        again = await psub.fetch(5, timeout=3)
        assert [(m.data, m.metadata.num_delivered) for m in again] == [(b"t58", 2)]
        await again[0].ack_sync()


async def test_a_run_whose_event_cannot_be_stored_does_not_hold_up_the_others(bus: Bus) -> None:
    stop = asyncio.Event()
    msgs = await _triggers(bus, 4)
    # no stream takes this subject: its publish is never acknowledged (a broker refusing it)
    unstorable = ("cropcron.nowhere.x", b"{}", "settle-test.nowhere")
    async with _settling(bus, stop) as settler:
        stuck = asyncio.create_task(settler.settle(msgs[0], [_event(0), unstorable], "ack", 0, "run 0"))
        await asyncio.wait_for(asyncio.gather(*(
            settler.settle(msg, [_event(i)], "ack", 0, f"run {i}") for i, msg in enumerate(msgs[1:], 1))), 10)
        assert not stuck.done()  # still retrying its event, alone
        info = await bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer("normal"))
        assert info.num_ack_pending == 1  # the other three acked; run 0's trigger is not
        # stopping gives it up unsettled: its trigger comes back to a runner after ack_wait
        stop.set()
        await asyncio.wait_for(stuck, 10)
        await wait_for(lambda: _ack_pending(bus), 5, "run 0's trigger still unacknowledged")


async def _ack_pending(bus: Bus) -> bool:
    info = await bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer("normal"))
    return info.num_ack_pending == 1


async def test_runs_give_their_slot_on_when_they_end_and_unsettled_runs_stay_bounded(bus: Bus) -> None:
    """A run gives its slot to the next trigger as soon as its job ends, not when its outcome is
    stored; and a broker that cannot store outcomes (here: the runs stream refusing new
    messages, as on a full disk) stops the runner at twice `concurrency` unsettled runs."""
    await apply_yaml(bus, f"""
jobs:
  - {{name: {JOB}, type: data_cleanup, overlap: allow, max_retries: 0, call: tests.jobs.calls:noop}}
""")
    # max_msgs 0 would mean no limit: one message first, of another job
    await bus.js.publish(wire.run_event_subject("settle-filler", "succeeded"), b"{}")
    info = await bus.js.stream_info(wire.STREAM_RUNS)
    full = copy.copy(info.config)
    full.max_msgs, full.discard = info.state.messages, DiscardPolicy.NEW
    await bus.js.update_stream(full)
    async with in_process_runner(bus, concurrency=2) as runner:
        now = datetime.now(UTC)
        for i in range(10):
            tr = Trigger(run_id=f"bounded-{i}", job=JOB, kind="manual", created_at=now)
            await bus.js.publish(wire.trigger_subject("normal", JOB), tr.to_bytes())
        await wait_for(lambda: _started(runner, 4), 10, "four runs started")
        # two runs wait for their outcomes to be stored, two more ended and wait for a place to
        # settle, each on its run slot: no fifth run starts, however long the broker refuses
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            assert runner.stats["started"] == 4, runner.stats
            await asyncio.sleep(0.05)
        consumer = await bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer("normal"))
        assert consumer.num_ack_pending == 4
        await bus.js.update_stream(info.config)  # room again: everything is stored and settled
        await wait_for(lambda: _started(runner, 10), 20, "all ten runs")
        await wait_for(lambda: _succeeded_stored(bus, 10), 20, "ten outcomes stored")
        assert runner.stats["started"] == runner.stats["succeeded"] == 10


async def _started(runner: RunnerService, n: int) -> bool:
    return runner.stats["started"] >= n


async def _succeeded_stored(bus: Bus, n: int) -> bool:
    info = await bus.js.stream_info(wire.STREAM_RUNS, subjects_filter=wire.run_event_subject(JOB, "succeeded"))
    return info.state.messages >= n
