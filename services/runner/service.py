"""The runner: takes triggers from the three band consumers, runs the job, publishes run events,
and acks, naks (retry with the job's backoff) or terms (dead, malformed) the trigger.

Topology: three durable pull consumers on the work-queue triggers stream (high, normal, low),
shared by every runner process. Per-job policy (pause, retries, overlap, concurrency) is enforced
here from the KV-backed catalog, so a job costs the broker nothing (DESIGN.md: one consumer per
job stops at 1,000). Retries are JetStream redelivery: `nak(delay)`; the attempt number is the
message's delivery count, which also counts a delivery lost with a dead runner.

Early ticks (published ahead of their instant, settings.tick_lead): the first delivery is handed
back with nak(delay) until HOLD_MARGIN before the instant, so the broker, not this process, keeps
it through the lead (a runner dying meanwhile loses nothing); the second is held here to the
instant on this machine's clock and run as attempt 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.runner.backoff import retry_delay
from services.runner.chores import ChoreRun, run_builtin
from services.runner.execute import Outcome, render_argv, run_callable, run_command
from services.runner.hold import MAX_HOLD, InstantGates
from services.runner.inputs import RunInputs, file_of, prepare, watches_for
from services.runner.job_env import job_environ
from services.runner.leases import Leases
from services.runner.queueing import LeaseQueue
from services.runner.reaper import Reaper
from services.runner.settle import Action, Settler
from services.runner.slots import PrioritySlots
from shared import metrics, wire
from shared.bus import Bus, publish_until_acked
from shared.catalog import Catalog
from shared.config import JobSpec, Overlap
from shared.events import Rejected, RunEvent, RunState, Trigger, decode, utcnow
from shared.files import PathRefused
from shared.names import subject_key
from shared.run_context import RunContext
from shared.settings import BusSettings, ServiceSettings

log = logging.getLogger("cropcron.runner")

IDLE_POLL = 1.0  # seconds a fetcher waits on an empty band before releasing its slot
PENDING_CHECK = 0.5  # how often a waiting idle band asks whether work arrived for it
IDLE_AGING = 2.0  # an idle band waiting this long is promoted anyway (retries are not "pending")
# an early tick comes back this long before its instant: the broker redelivers a nak(delay) 2 ms
# late at the median and 11 ms at worst alone, but with 100 ticks an instant some came back up to
# 70 ms late (a whole instant started late then, bench/results.md); the rest is slept here
HOLD_MARGIN = 0.1


class RunnerService:
    def __init__(self, bus: Bus, catalog: Catalog, settings: ServiceSettings,
                 bus_settings: BusSettings | None = None) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.ack_wait = (bus_settings or BusSettings()).ack_wait
        self.slots = PrioritySlots(settings.concurrency)
        # runs whose job has ended and whose outcome is being stored, each having given its run
        # slot on (_settling_place): as many as there are slots
        self.unsettled = asyncio.Semaphore(settings.concurrency)
        self.running: set[asyncio.Task[None]] = set()  # one per trigger being handled
        self.inflight: dict[object, _InFlight] = {}  # jobs executing now, for the heartbeat loop
        self.leases: Leases | None = None
        self.queue: LeaseQueue | None = None  # triggers waiting for a place under their job's limit
        self.reaper = Reaper(settings.kill_grace)  # kills our jobs if this process dies under them
        self.ready = asyncio.Event()
        self.gates = InstantGates()  # early ticks held to their instant, one gate per instant
        self.settler: Settler | None = None  # run()'s: outcomes and acks of many runs in one round
        self.stats = {"started": 0, "succeeded": 0, "failed": 0, "dead": 0, "skipped": 0, "rejected": 0,
                      "held": 0}

    def status(self) -> dict[str, Any]:
        settled = {"settle_rounds": self.settler.rounds, "settled": self.settler.settled} if self.settler else {}
        return {"running": len(self.running), "slots": self.slots.size, **self.stats, **settled}

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # callables run in threads; the default pool (cores + 4) would queue them
        loop.set_default_executor(ThreadPoolExecutor(max_workers=max(self.settings.concurrency, 4)))
        lease_ttl = self.settings.lease_ttl or 3 * self.ack_wait
        self.leases = Leases(await self.bus.js.key_value(wire.KV_LEASES), lease_ttl)
        self.queue = LeaseQueue(self.leases)
        self.reaper.start()
        self.settler = Settler(self.bus, self.ack_wait, stop)
        await self.settler.start()
        settling = asyncio.create_task(self.settler.run(), name="settle")
        fetchers = [asyncio.create_task(self._fetch_loop(band, stop), name=f"fetch-{band}") for band in wire.BANDS]
        beats = asyncio.create_task(self._heartbeats(), name="heartbeats")
        announcer = asyncio.create_task(self._announcer(), name="announcer")
        self.ready.set()
        # what start-up made (modules, the catalog, the clients) lives as long as the process:
        # left to the collector, each full collection walked all of it while the loop stood
        # still, every 10-20 s a whole instant of runs 40-70 ms late (bench/results.md)
        gc.freeze()
        try:
            await stop.wait()
        finally:
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            await self._drain()  # jobs still running keep heartbeating (and settling) meanwhile
            for task in (beats, settling, announcer):
                task.cancel()
            await asyncio.gather(beats, settling, announcer, return_exceptions=True)
            await self.settler.close()
            await self.gates.close()
            self.reaper.stop()

    async def _drain(self) -> None:
        """Stop: give running jobs the grace period, then cancel them (their processes are
        killed and the triggers, never acked, are redelivered to another runner)."""
        if self.running:
            log.info("runner: waiting up to %.0fs for %d running jobs", self.settings.kill_grace, len(self.running))
            _, pending = await asyncio.wait(list(self.running), timeout=self.settings.kill_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- fetching ------------------------------------------------------------------------
    async def _fetch_loop(self, band: wire.Band, stop: asyncio.Event) -> None:
        psub: JetStreamContext.PullSubscription | None = None
        delay = 0.2
        idle = True  # was the band empty at the last fetch? (nothing known yet: as if it were)
        while not stop.is_set():
            idle = await self._acquire(band, idle)
            held = 1
            if idle:
                # An idle band waits for a free slot (a runner full of runs does not take triggers
                # another runner could start), then polls without it: held through the poll, the
                # slot would keep out another band's triggers, or an instant's early ticks coming
                # back together (the 100-jobs tail, bench/results.md). What the poll brings waits
                # for a slot as a band with work (_slot_for).
                self.slots.release()
                held = 0
            try:
                if psub is None:
                    psub = await self.bus.js.pull_subscribe_bind(durable=wire.runner_consumer(band),
                                                                 stream=wire.STREAM_TRIGGERS)
                # one message by long poll (so an idle band holds one trigger, not a batch); the
                # poll is short so that a band with work that finds none gives back the slot it
                # polled with within a second ...
                msgs = await psub.fetch(1, timeout=IDLE_POLL)
            except TimeoutError:  # nats' own TimeoutError subclasses it; both mean "nothing yet"
                self.slots.release(held)
                idle = True
                continue
            except asyncio.CancelledError:
                self.slots.release(held)
                raise
            except Exception as exc:
                # after a reconnect a pull subscription can go quiet (nats.py #504): re-bind it
                self.slots.release(held)
                log.warning("runner: fetch from %s failed (%r); re-subscribing in %.1fs", band, exc, delay)
                await _drop(psub)
                psub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            waited = not held and await self._slot_for(msgs[0], band)
            self._spawn(msgs[0], band)
            more, broken = await self._fetch_more(psub, band, msgs[0])
            if broken:
                await _drop(psub)
                psub = None
            # a trigger that waited for its slot says nothing of what arrived meanwhile: the band
            # asks again in its place, as a band with work, not behind others as idle
            idle = not waited and (more or msgs)[-1].metadata.num_pending == 0
            for msg in more:
                self._spawn(msg, band)

    async def _fetch_more(self, psub: JetStreamContext.PullSubscription, band: wire.Band,
                          first: Msg) -> tuple[list[Msg], bool]:
        """After one message, whatever else is waiting, as a batch (DESIGN.md: batching is the
        lever), with a slot each; and whether the subscription broke. Only when the broker says
        more is waiting: an empty batch fetch would wait out its whole timeout. num_pending leaves
        out redeliveries, and early ticks handed back come back together at their instant: after a
        redelivery, ask too (no_wait answers at once when there are some). The first message is
        already started, before this fetch can wait."""
        pending = first.metadata.num_pending or 0
        if not pending and (first.metadata.num_delivered or 1) > 1:
            pending = self.settings.fetch_batch - 1
        extra = self.slots.take_more(min(self.settings.fetch_batch - 1, pending)) if pending else 0
        if not extra:
            return [], False
        more: list[Msg] = []
        broken = False
        try:
            more = await psub.fetch(extra, timeout=0.05)
        except TimeoutError:
            pass
        except Exception as exc:
            log.warning("runner: batch fetch from %s failed (%r); re-subscribing", band, exc)
            broken = True
        if len(more) < extra:
            self.slots.release(extra - len(more))
        return more, broken

    async def _acquire(self, band: wire.Band, idle: bool) -> bool:
        """A slot for this band's next fetch; whether the band is still idle. While an idle band
        waits behind busier ones it checks whether work has arrived for it, and if so claims its
        priority back (and is idle no more)."""
        if not idle:
            await self.slots.acquire(band)
            return False
        waiter = asyncio.ensure_future(self.slots.acquire(band, idle=True))
        since = asyncio.get_running_loop().time()
        promoted = False
        try:
            while not waiter.done():
                done, _ = await asyncio.wait([waiter], timeout=PENDING_CHECK)
                if done:
                    break
                try:
                    info = await self.bus.js.consumer_info(wire.STREAM_TRIGGERS, wire.runner_consumer(band))
                except Exception as exc:
                    log.debug("runner: consumer info for %s failed: %r", band, exc)
                    continue
                # num_pending does not count naks waiting out their delay (retries), so an idle
                # band is also promoted after IDLE_AGING: it cannot starve behind a busy one
                if info.num_pending or asyncio.get_running_loop().time() - since > IDLE_AGING:
                    self.slots.promote(band)
                    promoted = True
            waiter.result()
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        return not promoted

    async def _slot_for(self, msg: Msg, band: wire.Band) -> bool:
        """A run slot for a trigger an idle band's slotless poll brought: at once while slots are
        free; else (they filled up during the poll) it waits in its band's place, the delivery
        kept ours (in_progress every ack_wait/3) so the broker does not give it out again, and
        handed back at once if the runner stops meanwhile. True if it had to wait."""
        if self.slots.free > 0 and not self.slots.waiting():
            await self.slots.acquire(band)  # free and nobody ahead: returns without waiting
            return False
        waiter = asyncio.ensure_future(self.slots.acquire(band))
        try:
            while True:
                done, _ = await asyncio.wait([waiter], timeout=self.ack_wait / 3)
                if done:
                    waiter.result()
                    return True
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        except asyncio.CancelledError:
            waiter.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise

    def _spawn(self, msg: Msg, band: wire.Band) -> None:
        slot = _Slot(self.slots, band)  # the slot the fetch loop took for this message
        task = asyncio.create_task(self._handle_safely(msg, slot))
        self.running.add(task)  # a reference, so the task is not collected mid-run
        task.add_done_callback(lambda t: self._done(t, slot))

    def _done(self, task: asyncio.Task[None], slot: _Slot) -> None:
        self.running.discard(task)
        slot.release()

    async def _handle_safely(self, msg: Msg, slot: _Slot) -> None:
        try:
            await self._handle(msg, slot)
        except asyncio.CancelledError:
            raise
        except Exception:
            # a bug must not kill the fetch loop; the trigger is redelivered after ack_wait
            log.exception("runner: unexpected error handling %s", msg.subject)

    # -- one trigger ---------------------------------------------------------------------
    async def _read(self, msg: Msg) -> tuple[Trigger, JobSpec] | None:
        """The trigger and its job, or None when it was rejected (malformed, misrouted, unknown job)."""
        try:
            trigger: Trigger = decode(Trigger, msg.data)
        except Exception as exc:
            await self._reject(msg, f"malformed trigger: {_short(exc)}")
            return None
        if msg.subject.rsplit(".", 1)[-1] != subject_key(trigger.job):
            await self._reject(msg, f"trigger for job {trigger.job!r} arrived on subject {msg.subject!r}")
            return None
        spec = self.catalog.specs.get(trigger.job) or await self.catalog.lookup(trigger.job)
        if spec is None:
            await self._reject(msg, f"unknown job {trigger.job!r} (not in the applied config)")
            return None
        return trigger, spec

    async def _handle(self, msg: Msg, slot: _Slot) -> None:
        read = await self._read(msg)
        if read is None:
            return
        trigger, spec = read
        attempt = await self._attempt_number(msg, trigger)
        if attempt is None:
            return  # an early tick handed back to the broker until its instant
        # checked after an early tick's hold: a job paused in the lead window is skipped at its instant
        if self.catalog.paused(spec.name) and trigger.kind != "manual":
            await self._finish(msg, self._event(spec, trigger, RunState.SKIPPED, attempt, reason="job is paused"),
                               "ack")
            return
        max_attempts = spec.job.max_retries + 1
        if attempt > max_attempts:
            # the last attempt was lost with its runner (it was delivered but never finished)
            ev = self._event(spec, trigger, RunState.DEAD, attempt - 1,
                             reason=f"delivery {attempt} exceeds max_retries {spec.job.max_retries}; "
                                    "the last attempt did not report back (runner lost)")
            await self._finish(msg, ev, "term")
            return
        try:  # file and batch runs: the paths are checked here, on the machine that runs the job
            inputs = prepare(spec, trigger, await watches_for(self.bus.js, self.catalog.watches, trigger))
        except PathRefused as exc:
            await self._refuse(msg, spec, trigger, attempt, str(exc))
            return
        if inputs is not None and inputs.refused:
            await self._refused_files(msg, spec, trigger, inputs.refused)
        leased = spec.job.overlap is not Overlap.ALLOW
        held = [leased]

        async def release() -> None:
            if held[0] and self.queue is not None:
                held[0] = False
                await self.queue.release(spec.name, trigger.run_id)

        try:
            if leased and not await self._take_lease(msg, spec, trigger, attempt, slot):
                return
            try:
                await self._attempt(msg, spec, trigger, attempt, slot, inputs, release if leased else None)
            finally:
                await release()
        finally:
            if inputs is not None:
                inputs.close()

    async def _attempt_number(self, msg: Msg, trigger: Trigger) -> int | None:
        """The delivery count; for an early tick one less, after holding it to its instant, or None
        for its first delivery, handed back."""
        delivery = msg.metadata.num_delivered or 1
        if not trigger.early:
            return delivery
        if delivery == 1:
            await self._hand_back(msg, trigger)
            return None
        await self.gates.wait(trigger.scheduled_at)
        return delivery - 1

    async def _hand_back(self, msg: Msg, trigger: Trigger) -> None:
        """An early tick's first delivery: back to the broker until just before its instant. Always,
        even when the instant has passed, so that the attempt number (deliveries minus one) does not
        depend on when it arrived. A nak that is lost comes back after ack_wait instead."""
        wait = 0.0
        if trigger.scheduled_at is not None:
            wait = (trigger.scheduled_at - utcnow()).total_seconds() - HOLD_MARGIN
        self.stats["held"] += 1
        try:
            await msg.nak(delay=min(max(wait, 0.0), MAX_HOLD))
        except Exception as exc:
            log.warning("runner: handing back early tick %s failed (%r); it returns after ack_wait",
                        trigger.run_id, exc)

    async def _take_lease(self, msg: Msg, spec: JobSpec, trigger: Trigger, attempt: int, slot: _Slot) -> bool:
        """A place under the job's concurrency limit. At the limit: `skip` records `skipped`; `queue`
        and caught-up instants (each must run: catch-up all) wait their turn, without a run slot."""
        assert self.leases is not None and self.queue is not None
        limit = spec.job.concurrency
        # with triggers of this job already queued here, a new one queues behind them
        if not self.queue.waiting(spec.name) and await self.leases.acquire(spec.name, trigger.run_id, limit):
            return True
        if spec.job.overlap is Overlap.SKIP and not trigger.catchup:
            reason = f"overlap=skip: {limit} run(s) of this job already running"
            await self._finish(msg, self._event(spec, trigger, RunState.SKIPPED, attempt, reason=reason), "ack")
            return False
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.ack_wait / 3

        async def keepalive() -> None:  # the delivery stays ours while it waits
            nonlocal next_beat
            if loop.time() >= next_beat:
                await msg.in_progress()
                next_beat = loop.time() + self.ack_wait / 3

        slot.release()
        await self.queue.wait(spec.name, trigger.run_id, limit, trigger.scheduled_at or trigger.created_at, keepalive)
        await slot.take()  # a place is ours: now a run slot, like any trigger the fetch loop takes
        return True

    async def _attempt(self, msg: Msg, spec: JobSpec, trigger: Trigger, attempt: int, slot: _Slot,
                       inputs: RunInputs | None = None, release: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run one attempt and report it. `release` frees the job's overlap lease: called as soon as
        the job has ended, before the outcome is published, so a run asked for the moment the outcome
        is seen never finds the finished run still holding the job's place (overlap: skip)."""
        started = utcnow()
        self.stats["started"] += 1
        metrics.run_started(spec.name, trigger.scheduled_at, started, trigger.kind, attempt)
        # `started` only for a run still going after started_after (the announcer loop's, below):
        # most runs are short, and their outcome (with started_at) is then the one message stored
        # for them (issue 12)
        loop = asyncio.get_running_loop()
        key = object()
        # heartbeats keep the trigger ours until it is settled, not only while the job runs: when
        # the outcome cannot be stored yet (a broker whose disk is full), a redelivery would run
        # the job again, and again, and finally record a success as dead "runner lost"
        now = loop.time()
        inflight = self.inflight[key] = _InFlight(msg, spec, trigger, now, leased=release is not None,
                                                  since=now, started=started, attempt=attempt, unannounced=True)
        if self.settings.started_after <= 0:
            self._announce_started(inflight)
        settling = False
        try:
            try:
                outcome = await self._execute(spec, trigger, attempt, inputs)
            except asyncio.CancelledError:
                # shutting down: the job was killed; hand the trigger to another runner now
                with contextlib.suppress(Exception):
                    await asyncio.shield(msg.nak())
                raise
            finally:
                inflight.unannounced = False  # ended: its outcome says it started
            if release is not None:
                inflight.leased = False  # the heartbeat must not renew (re-create) the lease now
                await release()
            await self._settling_place(slot)
            settling = True
            # the started event's PubAck first, so it is stored before the outcome; losing it is
            # harmless (the outcome carries started_at too)
            if inflight.announcing is not None:
                await asyncio.wait([inflight.announcing], timeout=10)
            await self._report(msg, spec, trigger, attempt, started, outcome)
        finally:
            del self.inflight[key]
            if settling:
                self.unsettled.release()

    async def _settling_place(self, slot: _Slot) -> None:
        """The job has ended: its run slot goes to the next trigger while its outcome is stored
        (a round of the Settler, 50-60 ms with a broker fsync per message), so the runs of one
        instant beyond the free slots start when the first runs end, not when they are settled
        (the 100-jobs tail, bench/results.md). Unsettled runs stay bounded: when the broker cannot
        store outcomes (disk full) `concurrency` of them wait here, a run slot each, and the
        runner stops taking triggers at twice `concurrency` unsettled, not at max_ack_pending."""
        await self.unsettled.acquire()
        slot.release()

    def _announce_started(self, job: _InFlight) -> None:
        if job.unannounced:
            # made only now: most runs end before, and one model less per run is a real share of
            # a short run's cost (and of the time between holding an early tick and starting it)
            ev = self._event(job.spec, job.trigger, RunState.STARTED, job.attempt, started_at=job.started,
                             at=job.started)
            job.announcing = asyncio.create_task(self._announce(ev))
            job.unannounced = False

    async def _announcer(self) -> None:
        """`started` events for the runs still going started_after (up to 1.5 times that) after
        they started: one loop for all runs instead of a timer handle per run, made and cancelled
        for each (3 % of the runner's time at 1,000 runs/s, bench/results.md)."""
        loop = asyncio.get_running_loop()
        after = self.settings.started_after
        while True:
            await asyncio.sleep(max(after / 2, 0.01))
            now = loop.time()
            for job in list(self.inflight.values()):
                if job.unannounced and now - job.since >= after:
                    self._announce_started(job)

    async def _announce(self, ev: RunEvent) -> None:
        try:
            ack = await self.bus.js.publish_async(wire.run_event_subject(ev.job, ev.state), ev.to_bytes(),
                                                  headers={wire.HEADER_MSG_ID: ev.msg_id()})
            await asyncio.wait_for(ack, 10)
        except Exception as exc:  # the outcome still reports the run
            log.debug("runner: started event of run %s not stored: %r", ev.run_id, exc)

    async def _report(self, msg: Msg, spec: JobSpec, trigger: Trigger, attempt: int, started: datetime,
                      outcome: Outcome) -> None:
        """Publish the attempt's outcome, then ack (succeeded), nak with the retry delay, or term (dead)."""
        finished = utcnow()
        common: dict[str, Any] = dict(
            started_at=started, finished_at=finished, duration_s=(finished - started).total_seconds(),
            exit_code=outcome.exit_code, timed_out=outcome.timed_out, error=outcome.error,
            output_tail=outcome.output_tail)
        metrics.run_duration(spec.name, common["duration_s"])
        if outcome.ok:
            self.stats["succeeded"] += 1
            ev = self._event(spec, trigger, RunState.SUCCEEDED, attempt, result=outcome.result, **common)
            await self._finish(msg, ev, "ack")
            return
        self.stats["failed"] += 1
        failed = self._event(spec, trigger, RunState.FAILED, attempt, **common)
        if attempt < spec.job.max_retries + 1:
            delay = retry_delay(spec.job, attempt)
            nxt = self._event(spec, trigger, RunState.RETRYING, attempt, next_attempt_at=finished + timedelta(
                seconds=delay), reason=f"attempt {attempt} of {spec.job.max_retries + 1} failed", **common)
            await self._finish(msg, [failed, nxt], "nak", delay)
        else:
            self.stats["dead"] += 1
            dead = self._event(spec, trigger, RunState.DEAD, attempt,
                               reason=f"all {attempt} attempts failed", **common)
            await self._finish(msg, [failed, dead], "term")

    async def _execute(self, spec: JobSpec, trigger: Trigger, attempt: int,
                       inputs: RunInputs | None = None) -> Outcome:
        job = spec.job
        scheduled = trigger.scheduled_at.isoformat() if trigger.scheduled_at else ""
        values: dict[str, Any] = {"run_id": trigger.run_id, "job": job.name, "type": job.type,
                                  "scheduled_at": scheduled, "attempt": str(attempt), "trigger": trigger.kind,
                                  "python": sys.executable, **(inputs.values if inputs else {})}
        if job.run is not None:
            env = job_environ(job, self.settings.nats_url, {
                "CROPCRON_RUN_ID": trigger.run_id, "CROPCRON_JOB": job.name, "CROPCRON_ATTEMPT": str(attempt),
                "CROPCRON_SCHEDULED_AT": scheduled, **(inputs.env if inputs else {})})
            try:
                argv = render_argv(job.run, values)
            except ValueError as exc:
                return Outcome(ok=False, error=str(exc))
            return await run_command(argv, spec.cwd, env, job.timeout, self.settings.kill_grace, job.output_lines,
                                     self.reaper)
        if job.builtin is not None:  # one of cropcron's own chores, run here like a call:
            return await run_builtin(ChoreRun(self.bus, self.catalog, self.settings, self.reaper, spec,
                                              trigger.run_id), job.timeout)
        ctx = RunContext(run_id=trigger.run_id, job=job.name, job_type=job.type, attempt=attempt,
                         kind=trigger.kind, scheduled_at=trigger.scheduled_at,
                         data={**trigger.data, **(inputs.data if inputs else {})})
        return await run_callable(job.call or "", ctx, job.timeout, spec.cwd)

    async def _heartbeats(self) -> None:
        """Keep every running job's trigger (and overlap lease) ours, so only a runner that really
        died gets its work redelivered. One loop for all jobs: a job running less than ack_wait/3
        costs nothing here (a task per job would cost every run)."""
        loop = asyncio.get_running_loop()
        period = self.ack_wait / 3
        while True:  # until cancelled after the drain: jobs finishing in the grace period need it
            await asyncio.sleep(period / 2)
            now = loop.time()
            for job in list(self.inflight.values()):
                if now - job.last_beat < period:
                    continue
                job.last_beat = now
                try:
                    await job.msg.in_progress()
                    if job.leased and self.leases is not None:
                        await self.leases.renew(job.spec.name, job.trigger.run_id)
                except Exception as exc:  # the bus is reconnecting; try again next beat
                    log.warning("runner: heartbeat for run %s failed: %r", job.trigger.run_id, exc)

    # -- results -------------------------------------------------------------------------
    def _event(self, spec: JobSpec, trigger: Trigger, state: RunState, attempt: int, at: datetime | None = None,
               **fields: Any) -> RunEvent:
        return RunEvent(run_id=trigger.run_id, job=spec.name, job_type=spec.job.type, state=state, attempt=attempt,
                        at=at or utcnow(), trigger_kind=trigger.kind, scheduled_at=trigger.scheduled_at,
                        runner=self.settings.instance, file=file_of(trigger), **fields)

    async def _finish(self, msg: Msg, events: RunEvent | list[RunEvent], action: Action, delay: float = 0) -> None:
        """Publish the outcome durably, then settle the trigger, in a round with other runs' (the
        Settler). Until the events are stored the trigger stays unacked, so a crash here means a
        redelivery, never a lost result; a confirmed ack, because a lost one (a cluster node dying)
        would run the finished job again."""
        items = [events] if isinstance(events, RunEvent) else events
        if items[-1].state is RunState.SKIPPED:
            self.stats["skipped"] += 1
        assert self.settler is not None
        await self.settler.settle(msg, [(wire.run_event_subject(e.job, e.state), e.to_bytes(), e.msg_id())
                                        for e in items], action, delay, f"runner: run {items[0].run_id}")
        metrics.run_events((e.job, e.state.value) for e in items)
        last = items[-1]
        # successes at DEBUG: at thousands of runs/s a line each is a real share of the cost
        # (bench/), and history has every run; anything else is worth a line
        level = logging.DEBUG if last.state is RunState.SUCCEEDED else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "run %s job=%s attempt=%d %s%s", last.run_id, last.job, last.attempt, last.state.value,
                    f" ({last.error or last.reason})" if (last.error or last.reason) else "")

    async def _refuse(self, msg: Msg, spec: JobSpec, trigger: Trigger, attempt: int, reason: str) -> None:
        """A file or batch run whose path must not be used: a `rejected` event (source "runner",
        on cropcron.rejected.file) and the run recorded as dead with the reason. Terminal: retrying
        cannot make a path that leaves the root acceptable, and a changed file is its own arrival."""
        self.stats["rejected"] += 1
        log.error("runner: refused run %s of %s: %s", trigger.run_id, spec.name, reason)
        body = Rejected(source="runner", subject=msg.subject, reason=f"job {spec.name!r}: {reason}", at=utcnow(),
                        payload_excerpt=msg.data[:500].decode("utf-8", "replace"))
        await publish_until_acked(self.bus, [(wire.rejected_subject("file"), body.to_bytes(),
                                              f"refused.{trigger.run_id}")], "runner: refusal")
        ev = self._event(spec, trigger, RunState.DEAD, attempt, reason=f"refused: {reason}")
        self.stats["dead"] += 1
        await self._finish(msg, ev, "term")

    async def _refused_files(self, msg: Msg, spec: JobSpec, trigger: Trigger, refused: list[tuple[str, str]]) -> None:
        """Batch files left out of the manifest (the run goes ahead with the rest)."""
        now = utcnow()
        items = []
        for index, (rel, reason) in enumerate(refused):
            log.error("runner: batch %s of %s: left out %r: %s", trigger.run_id, spec.name, rel, reason)
            body = Rejected(source="runner", subject=msg.subject, reason=f"job {spec.name!r}: {reason}", at=now,
                            payload_excerpt=rel[:500])
            items.append((wire.rejected_subject("file"), body.to_bytes(), f"refused.{trigger.run_id}.{index}"))
        await publish_until_acked(self.bus, items, "runner: batch refusals")

    async def _reject(self, msg: Msg, reason: str) -> None:
        """Malformed or unusable triggers are terminated (no redelivery loop) and reported."""
        self.stats["rejected"] += 1
        log.error("runner: rejected trigger on %s: %s", msg.subject, reason)
        body = Rejected(source="trigger", subject=msg.subject, reason=reason, at=utcnow(),
                        payload_excerpt=msg.data[:500].decode("utf-8", "replace"))
        await publish_until_acked(self.bus, [(wire.rejected_subject("trigger"), body.to_bytes(),
                                              f"rejected.{msg.metadata.sequence.stream}")], "runner: rejection")
        await msg.term()


class _Slot:
    """The run slot one trigger's task holds; given back while the trigger waits in the queue."""

    def __init__(self, slots: PrioritySlots, band: wire.Band) -> None:
        self.slots = slots
        self.band = band
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    async def take(self) -> None:
        await self.slots.acquire(self.band)
        self.held = True


@dataclass
class _InFlight:
    msg: Msg
    spec: JobSpec
    trigger: Trigger
    last_beat: float  # loop time of the last in_progress (or of the start)
    leased: bool = False  # it holds the job's overlap lease, which the heartbeat renews
    since: float = 0.0  # loop time the job started
    started: datetime | None = None  # wall clock time the job started
    attempt: int = 1
    unannounced: bool = False  # its `started` event is still to be published (if it runs long enough)
    announcing: asyncio.Task[None] | None = None  # publishing it


async def _drop(psub: JetStreamContext.PullSubscription | None) -> None:
    if psub is not None:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", "; ")
    return text[:300]
