"""Outcomes and acks of many runs in one round (issue 12, item 1).

A run that ends hands its events and its trigger's settlement (ack, nak with a delay, or term) to
the Settler and waits. One task takes whatever has queued up meanwhile, publishes all the events
pipelined with one wait for their PubAcks, then settles every trigger whose events are stored,
the acks confirmed through one reply inbox with one wait. Per run that replaces a PubAck wait and
an ack request (a future, a timeout handle and a wake-up each) with a share of two waits; the
profile at 1,000 jobs/s had the two at a third of the runner's time (bench/results.md).

No batch is held open to fill: a round starts as soon as the previous one ends, so at low rates a
run is settled as soon as it would have been alone, and under load the rounds grow by themselves.

The guarantees are the old per-run ones: a trigger is settled only after its events are stored
(a crash in between means a redelivery, never a lost result), and an ack is confirmed by the broker.
A run whose publish or ack fails in a round (the broker restarting) leaves the round and goes the
old way, alone, with its own retries, so one bad run never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Literal

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.bus import Bus, ack_confirmed, publish_all, publish_until_acked

log = logging.getLogger("cropcron.runner")

Action = Literal["ack", "nak", "term"]
Publish = tuple[str, bytes, str]  # subject, payload, Nats-Msg-Id


@dataclass(eq=False)
class _Settlement:
    msg: Msg
    items: list[Publish]
    action: Action
    delay: float
    what: str
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Settler:
    def __init__(self, bus: Bus, ack_wait: float, stop: asyncio.Event) -> None:
        self.bus = bus
        self.ack_wait = ack_wait
        self.stop = stop
        self._queue: list[_Settlement] = []
        self._wake = asyncio.Event()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[bool]] = {}  # ack reply subject -> confirmed?
        self._serial = 0
        self._alone: set[asyncio.Task[None]] = set()
        self.rounds = 0  # for status and the bench: runs settled / rounds is the batch size
        self.settled = 0

    async def start(self) -> None:
        # the client's inbox prefix (_INBOX_<user>), which the runner's permissions allow
        self._inbox = self.bus.nc.new_inbox()
        self._sub = await self.bus.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def close(self) -> None:
        """After the drain. Runs still retrying alone are given up: their triggers, unsettled,
        come back to another runner (their events, if stored, are deduplicated by Nats-Msg-Id)."""
        for task in self._alone:
            task.cancel()
        await asyncio.gather(*self._alone, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def settle(self, msg: Msg, items: list[Publish], action: Action, delay: float, what: str) -> None:
        """Store `items`, then settle `msg`; returns when both are done (or given up on at stop)."""
        job = _Settlement(msg, items, action, delay, what)
        self._queue.append(job)
        self._wake.set()
        await asyncio.shield(job.done)  # a cancelled run still has its outcome stored

    async def run(self) -> None:
        """The rounds, until cancelled (after the runner's drain: runs ending in the grace need it)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                try:
                    await self._round(batch)
                except Exception:  # a bug must not strand the runs waiting on it: they go alone
                    log.exception("runner: settling %d runs together failed; settling them one by one", len(batch))
                    for job in batch:
                        if not job.done.done():
                            self._go_alone(job, job.items)  # stored or not: Nats-Msg-Id dedupes

    async def _round(self, batch: list[_Settlement]) -> None:
        self.rounds += 1
        failed = set(await publish_all(self.bus, [item for job in batch for item in job.items]))
        stored: list[_Settlement] = []
        for job in batch:
            missing = [item for item in job.items if item in failed]
            if missing:
                self._go_alone(job, missing)
            else:
                stored.append(job)
        acks: list[tuple[_Settlement, asyncio.Future[bool]]] = []
        for job in stored:
            if job.action == "ack":
                acks.append((job, await self._ack_requested(job.msg)))
                continue
            try:
                await _nak_or_term(job)
            except Exception as exc:  # unacked, the trigger comes back after ack_wait: as before
                log.warning("%s: %s not sent: %r", job.what, job.action, exc)
            self._finish(job)
        if not acks:
            return
        # one wait for every confirmation; a missing one is retried alone (a cluster node dying)
        await asyncio.wait([fut for _, fut in acks], timeout=min(2.0, max(self.ack_wait / 3, 0.1)))
        for job, fut in acks:
            if fut.done() and not fut.cancelled() and fut.result():
                self._finish(job)
            else:
                fut.cancel()
                self._go_alone(job, [])

    async def _ack_requested(self, msg: Msg) -> asyncio.Future[bool]:
        """Send `msg`'s ack with a reply subject of ours (what ack_sync does, without a request each)."""
        self._serial += 1
        reply = f"{self._inbox}.{self._serial}"
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = fut
        fut.add_done_callback(lambda _: self._waiting.pop(reply, None))
        try:
            await self.bus.nc.publish(msg.reply, b"", reply=reply)
        except Exception as exc:
            log.debug("runner: ack not sent: %r", exc)
            fut.set_result(False)
        return fut

    async def _on_reply(self, reply: Msg) -> None:
        fut = self._waiting.get(reply.subject)
        if fut is not None and not fut.done():
            # a status reply (503: no responders) means the ack reached no consumer
            fut.set_result(not (reply.headers and reply.headers.get("Status")))

    def _finish(self, job: _Settlement) -> None:
        self.settled += 1
        if not job.done.done():
            job.done.set_result(None)

    def _go_alone(self, job: _Settlement, unstored: list[Publish]) -> None:
        task = asyncio.create_task(self._alone_settle(job, unstored))
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    async def _alone_settle(self, job: _Settlement, unstored: list[Publish]) -> None:
        """The old per-run path: publish until acknowledged (backing off), then settle."""
        try:
            if unstored and await publish_until_acked(self.bus, unstored, job.what, self.stop):
                return  # stopping with events unstored: the trigger stays unacked and comes back
            if job.action == "ack":
                await ack_confirmed(job.msg, self.ack_wait, job.what, self.stop)
            else:
                await _nak_or_term(job)
        except Exception as exc:
            log.warning("%s: not settled: %r", job.what, exc)
        finally:
            self._finish(job)


async def _nak_or_term(job: _Settlement) -> None:
    """A settlement other than an ack: a retry after the delay, or the end of the trigger."""
    await (job.msg.nak(delay=job.delay) if job.action == "nak" else job.msg.term())
