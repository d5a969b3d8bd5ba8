"""The timer: one tick per job per scheduled instant, published to the triggers stream.

Durability: the timer's progress is one record in KV (`fired_through`, `firing_through`). Before a
batch of instants up to T is published it records `firing_through = T`; after every PubAck it
records `fired_through = T`. After a crash, instants in (fired_through, firing_through] may or
may not have been published, so they are republished under the same Nats-Msg-Id (the broker
drops the duplicates); instants after that follow each job's catch-up policy. One record instead
of one per job keeps 10,000 jobs/s at two KV writes per batch (docs/architecture.md).

With a tick lead (settings.tick_lead), instants up to the lead ahead of the clock are published
now, marked `early`, and `fired_through` may be that far ahead of the clock: recovery and edits
start after it, so no instant is published twice under different decisions.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from services.timer.planner import Plan, plan_catchup
from shared import metrics, wire
from shared.bus import Bus, Stopping, publish_until_acked, retry_transient
from shared.catalog import Catalog
from shared.clock import Clock, SystemClock
from shared.config import JobSpec
from shared.events import RunEvent, RunState, Trigger, tick_run_id
from shared.job_schedule import schedule_of
from shared.lease import LeaderLease
from shared.schedule import Schedule
from shared.settings import ServiceSettings

log = logging.getLogger("cropcron.timer")

# A clock before this is not set yet (an edge box without RTC boots at 1970 and steps when NTP
# syncs): the timer fires nothing until then (RELIABILITY A9) rather than a storm of catch-up.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)

# An instant found this late by the running loop means the process stalled (suspend, clock
# step) or cannot keep up: apply the job's catch-up policy, saying so.
STALL_SECONDS = 30.0
DOWN = "timer was not running"
BEHIND = f"timer fell more than {STALL_SECONDS:g}s behind (overloaded or suspended)"
# ticks (and missed records) in one published batch, beyond which the next instant waits for
# the next batch; the instant being added is always completed
BATCH_LIMIT = 5000


@dataclass
class Progress:
    fired_through: datetime
    firing_through: datetime
    mode: str = "fire"  # the batch being published: "fire" (on time) or "catchup" (planned)


class TimerService:
    def __init__(self, bus: Bus, catalog: Catalog, settings: ServiceSettings, clock: Clock | None = None) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.clock = clock or SystemClock()
        self.schedules: dict[str, Schedule] = {}
        self.due: dict[str, datetime] = {}  # job -> its next instant (authoritative)
        self.heap: list[tuple[datetime, str]] = []  # may hold stale entries; checked against `due`
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.progress: Progress | None = None
        self.role = "starting"
        self.stopping = asyncio.Event()
        self.kv: KeyValue | None = None
        self.ready = asyncio.Event()
        self.fired = 0
        self.missed = 0
        catalog.on_change(self._on_change)

    def status(self) -> dict[str, object]:
        return {"role": self.role, "fired": self.fired, "missed": self.missed, "scheduled_jobs": len(self.due)}

    def _on_change(self, job: str) -> None:
        self.dirty.add(job)
        self.wake.set()

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
        # looked up once: key_value() costs a broker round trip, and progress is saved per batch
        self.kv = await self.bus.js.key_value(wire.KV_TIMER)
        lease = LeaderLease(self.kv, self.settings.instance, self.settings.leader_ttl)
        self.ready.set()  # leading or standing by from here on
        try:
            while not stop.is_set():
                if self.clock.now() < CLOCK_FLOOR:
                    if self.role != "clock_unsynchronized":
                        log.error("timer: the system clock reads %s, before %s: not firing until it is set",
                                  self.clock.now().isoformat(), CLOCK_FLOOR.date())
                    self.role = "clock_unsynchronized"
                    await lease.release()
                    await _wait(stop, 1.0)
                    continue
                if not await lease.try_acquire():
                    if self.role != "standby":
                        log.info("timer %s: another timer holds the lease; standing by", self.settings.instance)
                    self.role = "standby"
                    await _wait(stop, self.settings.leader_ttl / 3)
                    continue
                self.role = "leader"
                log.info("timer %s: leader; %d jobs", self.settings.instance, len(self.catalog.specs))
                await self._lead(stop, lease)
        except Stopping:
            pass  # stopped while the broker was unreachable; the progress record says what to replay
        finally:
            await lease.release()

    async def _lead(self, stop: asyncio.Event, lease: LeaderLease) -> None:
        await self._recover()
        renew_every = self.settings.leader_ttl / 3
        next_renew = asyncio.get_running_loop().time() + renew_every
        while not stop.is_set() and self.clock.now() >= CLOCK_FLOOR:
            if asyncio.get_running_loop().time() >= next_renew:
                if not await lease.renew():
                    return
                next_renew = asyncio.get_running_loop().time() + renew_every
            self._refresh_dirty()
            await self._fire_due()
            await self._sleep_until_next(stop, next_renew)

    # -- recovery and catch-up ---------------------------------------------------------
    async def _recover(self) -> None:
        now = self.clock.now()
        self.progress = await self._load_progress()
        self.schedules.clear()
        self.due.clear()
        self.heap.clear()
        self.dirty.clear()
        triggers: list[Trigger] = []
        missed: list[RunEvent] = []
        for name, spec in self.catalog.specs.items():
            schedule = schedule_of(spec)
            if schedule is None or self.catalog.paused(name):
                continue
            self.schedules[name] = schedule
            if self.progress is not None:
                self._catch_up(spec, schedule, self.progress.fired_through, now, triggers, missed,
                               replay=self.progress)
            # after a backward clock step, `now` is before instants already fired: start after them
            base = max(now, self.progress.fired_through) if self.progress else now
            self._push(name, schedule.next_after(base))
        if triggers or missed:
            log.info("timer: catch-up after downtime: %d to run, %d missed", len(triggers), len(missed))
        await self._publish(triggers, missed, now, mode="catchup")

    def _catch_up(self, spec: JobSpec, schedule: Schedule, after: datetime, now: datetime,
                  triggers: list[Trigger], missed: list[RunEvent], replay: Progress | None = None,
                  cause: str = DOWN) -> None:
        """Instants in (after, now] nobody fired, decided by the job's catch-up policy.

        `replay`: the batch a crashed timer was publishing, (fired_through, firing_through]. Those
        instants may or may not have been published, so they are published again exactly as
        decided then (same ids, so the broker and history drop what already arrived): all of
        them for a normal batch, the same plan for a catch-up batch (the plan depends only on
        the range and the moment it was decided, firing_through)."""
        start = max(after, spec.defined_at)
        state = self.catalog.states.get(spec.name)
        if state and state.resumed_at:
            start = max(start, state.resumed_at)
        if replay is not None and replay.firing_through > start:
            end = min(replay.firing_through, now)
            if replay.mode == "catchup":
                self._apply_plan(spec, plan_catchup(schedule, start, end, spec.job.catchup,
                                                    spec.job.catchup_window, self.settings.max_catchup_instants, cause),
                                 now, triggers, missed)
            else:
                for t in schedule.between(start, end, self.settings.max_catchup_instants):
                    self._due(spec, schedule, t, now, triggers, missed)
            start = end
        plan = plan_catchup(schedule, start, now, spec.job.catchup, spec.job.catchup_window,
                            self.settings.max_catchup_instants, cause)
        self._apply_plan(spec, plan, now, triggers, missed, cause)

    def _apply_plan(self, spec: JobSpec, plan: Plan, now: datetime, triggers: list[Trigger],
                    missed: list[RunEvent], cause: str = DOWN) -> None:
        triggers += [self._trigger(spec, t, now, catchup=True) for t in plan.run]
        missed += [self._missed(spec, t, reason, now) for t, reason in plan.missed]
        if plan.overflow:
            count, first, last = plan.overflow
            how_many = f"{count} instants" if count is not None else "the instants"
            missed.append(self._missed(
                spec, last, f"{cause}; {how_many} from {first.isoformat()} to "
                f"{last.isoformat()} not run (summarised)", now))

    def _timer_kv(self) -> KeyValue:
        if self.kv is None:
            raise RuntimeError("the timer's KV bucket is opened by run()")
        return self.kv

    async def _load_progress(self) -> Progress | None:
        async def read() -> bytes | None:
            try:
                return (await self._timer_kv().get(wire.TIMER_WATERMARK_KEY)).value
            except (KeyNotFoundError, KeyDeletedError):
                return None  # first start: nothing to catch up

        # a broker restoring its streams after a restart answers with errors for a while
        value = await retry_transient(read, "timer: reading its progress record", self.stopping)
        if value is None:
            return None
        data = json.loads(value or b"{}")
        return Progress(datetime.fromisoformat(data["fired_through"]), datetime.fromisoformat(data["firing_through"]),
                        data.get("mode", "fire"))

    async def _save_progress(self, fired: datetime, firing: datetime, mode: str = "fire") -> None:
        # stopping while this fails leaves `firing_through` ahead: the next start replays the batch
        await retry_transient(lambda: self._timer_kv().put(wire.TIMER_WATERMARK_KEY, _progress_body(fired, firing, mode)),
                              "timer: saving its progress record", self.stopping)
        self.progress = Progress(fired, firing, mode)

    # -- the loop ----------------------------------------------------------------------
    def _push(self, job: str, instant: datetime | None) -> None:
        if instant is None:
            self.due.pop(job, None)
            return
        self.due[job] = instant
        heapq.heappush(self.heap, (instant, job))

    def _refresh_dirty(self) -> None:
        """Apply catalog edits: new and edited jobs start from now (no catch-up for an edit), or
        with a tick lead from what was already published, which may be up to the lead ahead of now:
        the progress record says every instant up to it went out, so none may be added behind it."""
        if not self.dirty:
            return
        now = self.clock.now()
        if self.progress is not None:
            now = max(now, self.progress.fired_through)  # a clock behind what was fired: no re-fire
        names = set(self.catalog.specs) if "" in self.dirty else self.dirty
        for name in names - {""}:
            spec = self.catalog.specs.get(name)
            schedule = schedule_of(spec) if spec is not None else None
            if schedule is None or self.catalog.paused(name):
                self.schedules.pop(name, None)
                self.due.pop(name, None)
                continue
            old = self.schedules.get(name)
            if old is not None and name in self.due and spec is not None and _same(old, schedule):
                continue
            self.schedules[name] = schedule
            self._push(name, schedule.next_after(now))
        self.dirty.clear()

    async def _fire_due(self) -> None:
        now = self.clock.now()
        triggers: list[Trigger] = []
        missed: list[RunEvent] = []
        mode = "fire"
        # instants up to `lead` ahead go out now, marked early: runners start them at the instant
        horizon = now + timedelta(seconds=self.settings.tick_lead)
        through = now  # what the batch holds: every instant up to now, or up to where it is cut
        last: datetime | None = None
        while self.heap and self.heap[0][0] <= horizon:
            if len(triggers) + len(missed) >= BATCH_LIMIT and last is not None and self.heap[0][0] != last:
                # a timer behind (say 20 s at 10,000 jobs) publishes a batch per instant, not one
                # of 200,000: its memory stays bounded, and it records progress and renews its
                # lease between batches. Cut only between instants: the progress record says
                # every instant up to the batch's last went out, so none may be cut in two.
                through = last
                break
            instant, name = heapq.heappop(self.heap)
            last = instant
            if self.due.get(name) != instant:
                continue  # stale entry (job edited, paused or removed)
            spec = self.catalog.specs.get(name)
            schedule = self.schedules.get(name)
            if spec is None or schedule is None:
                continue  # removed; _refresh_dirty will drop it
            if (now - instant).total_seconds() > STALL_SECONDS:
                self._catch_up(spec, schedule, instant - timedelta(microseconds=1), now, triggers, missed,
                               cause=BEHIND)
                mode = "catchup"
                self._push(name, schedule.next_after(now))
            else:
                self._due(spec, schedule, instant, now, triggers, missed)
                self._push(name, schedule.next_after(instant))
        if triggers or missed:
            await self._publish(triggers, missed, through, mode)

    async def _sleep_until_next(self, stop: asyncio.Event, renew_at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = renew_at - loop.time()
        if self.heap:
            delay = min(delay, (self.heap[0][0] - self.clock.now()).total_seconds() - self.settings.tick_lead)
        if delay <= 0:
            return
        self.wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=min(delay, 1.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # -- publishing ---------------------------------------------------------------------
    def _due(self, spec: JobSpec, schedule: Schedule, instant: datetime, now: datetime,
             triggers: list[Trigger], missed: list[RunEvent]) -> None:
        """An instant on time: a tick, or, for a sun schedule's day without the event, its one
        `missed` record (same id as a tick of that instant: a replay records it once)."""
        reason = schedule.no_run_reason(instant)
        if reason is None:
            triggers.append(self._trigger(spec, instant, now))
        else:
            missed.append(self._missed(spec, instant, reason, now))

    def _trigger(self, spec: JobSpec, instant: datetime, now: datetime, catchup: bool = False) -> Trigger:
        return Trigger(run_id=tick_run_id(spec.name, instant), job=spec.name, kind="tick",
                       scheduled_at=instant, created_at=now, catchup=catchup, early=instant > now)

    def _missed(self, spec: JobSpec, instant: datetime, reason: str, now: datetime) -> RunEvent:
        return RunEvent(run_id=tick_run_id(spec.name, instant), job=spec.name, job_type=spec.job.type,
                        state=RunState.MISSED, attempt=0, at=now, trigger_kind="tick",
                        scheduled_at=instant, reason=reason, runner=f"timer:{self.settings.instance}")

    async def _publish(self, triggers: list[Trigger], missed: list[RunEvent], through: datetime,
                       mode: str = "fire") -> None:
        """Publish until every PubAck arrives; the broker may be restarting, so keep trying.
        `through`: the batch holds every instant up to it (now, or a cut batch's last instant)."""
        fired = self.progress.fired_through if self.progress else through
        # max(): a wall clock stepped backwards must not move the record of what was fired back
        horizon = max([through, fired, *(t.scheduled_at for t in triggers if t.scheduled_at)])
        # subjects are fixed now: the catalog may change (a job removed) while we await below
        pending = [(_subject(self.catalog, tr), tr.to_bytes(), tr.run_id) for tr in triggers]
        pending = [p for p in pending if p[0]]
        for ev in missed:
            pending.append((wire.run_event_subject(ev.job, ev.state), ev.to_bytes(), ev.msg_id()))
        # `firing_through` rides first in the same pipelined batch rather than a round trip of its
        # own before it (with a per-message fsync that round trip was most of a tick's latency).
        # The broker stores it alongside the triggers; a crash can only fall between the two
        # within one batch's flight, where the catch-up rules still record every instant.
        intent = _progress_body(fired, horizon, mode)
        pending.insert(0, (wire.kv_put_subject(wire.KV_TIMER, wire.TIMER_WATERMARK_KEY), intent,
                           f"progress.{fired.isoformat()}.{horizon.isoformat()}.{mode}"))
        self.progress = Progress(fired, horizon, mode)
        unacked = await publish_until_acked(self.bus, pending, "timer", self.stopping)
        if unacked:
            # stopping: leave `firing_through` ahead of `fired_through`, so the next start
            # republishes these instants under the same ids
            log.warning("timer: stopping with %d publishes unacknowledged; they are replayed on start", len(unacked))
            return
        self.fired += len(triggers)
        self.missed += len(missed)
        metrics.run_events((e.job, e.state.value) for e in missed)
        await self._save_progress(horizon, horizon)


def _progress_body(fired: datetime, firing: datetime, mode: str) -> bytes:
    return json.dumps({"fired_through": fired.isoformat(), "firing_through": firing.isoformat(),
                       "mode": mode}).encode()


def _subject(catalog: Catalog, trigger: Trigger) -> str:
    spec = catalog.specs.get(trigger.job)
    if spec is None:
        return ""  # removed since the instant came due: nothing to run
    return wire.trigger_subject(wire.band_for_priority(spec.job.priority), trigger.job)


def _same(a: Schedule, b: Schedule) -> bool:
    return a.signature() == b.signature()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
