"""The notifier: run events and raised alerts -> rules -> groups -> per-channel deliveries.

    CROPCRON_RUNS --(consumer "notifier")--> alerts for dead/timeout/missed/... runs, resolutions
        |                                         | published on cropcron.alert.<level>.<kind>
    dead-man's switch (overdue jobs, silent services) -----'
    CROPCRON_ALERTS --(consumer "notifier")--> groups (KV) --> CROPCRON_NOTIFY (work queue, the outbox)
    CROPCRON_NOTIFY --(consumer "deliver")--> email / Slack / log; DeliveryRecord per attempt

Every hop acks its input only once its output is durable (published with a deterministic
Nats-Msg-Id, or saved in KV), so a notifier killed anywhere loses nothing; a notification killed
mid-send is sent again with the same id (and email Message-ID). One active notifier at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from services.notifier import deadman, deliver, intake
from services.notifier.channels import Sender, TokenBucket, make_sender
from services.notifier.groups import Group, Timing
from services.notifier.render import Look
from services.notifier.settings import NotifierSettings
from services.notifier.state import JobsState, load_config, load_groups, load_state
from shared import wire
from shared.bus import Bus
from shared.catalog import Catalog
from shared.events import utcnow
from shared.i18n import resolve_locale
from shared.lease import LeaderLease
from shared.notify_config import NotificationsConfig, SlackChannel, channel_problems
from shared.settings import BusSettings, ServiceSettings

log = logging.getLogger("cropcron.notifier")


class NotifierService:
    def __init__(self, bus: Bus, catalog: Catalog, settings: ServiceSettings,
                 notifier: NotifierSettings | None = None) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.ns = notifier or NotifierSettings()
        # the outbox consumer's ack_wait (the topology's setting): a slow send is kept alive at a third of it
        self.notify_ack_wait = BusSettings().notify_ack_wait
        self.config: NotificationsConfig | None = None
        # the config last applied, kept when standing by: for alerts that cannot go through the bus
        # (a NATS cluster without quorum, cropcron/direct_alert.py)
        self.last_config: NotificationsConfig | None = None
        self.senders: dict[str, Sender] = {}
        self.broken: dict[str, str] = {}  # channel -> why it cannot send (reported, not fatal)
        self.buckets: dict[str, TokenBucket] = {}
        self.groups: dict[str, Group] = {}
        self.state = JobsState()
        self.kv: KeyValue | None = None
        self.started_at = utcnow()
        self.counts = {"alerts": 0, "notifications": 0, "sent": 0, "retries": 0, "failed": 0}
        self.role = "starting"
        self.ready = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {**self.counts, "role": self.role, "channels": sorted(self.senders), "broken": sorted(self.broken),
                "open_groups": sum(1 for g in self.groups.values() if g.active)}

    def look(self) -> Look:
        """Messages in the farm's language and zone, as applied now (`apply` changes them live)."""
        system = self.catalog.system
        return Look(resolve_locale(system.locale), system.timezone)

    @property
    def timing(self) -> Timing:
        c = self.config or NotificationsConfig()
        return Timing(c.group_window, c.group_interval, c.repeat_interval, self.ns.notify_max_alerts)

    async def run(self, stop: asyncio.Event) -> None:
        """Active while holding the lease in KV (one notifier at a time: two would each group and
        send); a second notifier stands by and takes over once the lease expires."""
        self.kv = await self.bus.js.key_value(wire.KV_NOTIFY)
        lease = LeaderLease(self.kv, self.settings.instance, self.settings.leader_ttl, "notifier")
        try:
            while not stop.is_set():
                if await lease.try_acquire():  # (False too while the bus is reconnecting)
                    self.role = "active"
                    log.info("notifier %s: active", self.settings.instance)
                    await self._active(stop, lease)
                    if not stop.is_set():
                        log.warning("notifier %s: lost the lease; standing by", self.settings.instance)
                elif self.role != "standby":
                    self.role = "standby"
                    log.info("notifier %s: another notifier is active; standing by", self.settings.instance)
                self.ready.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.leader_ttl / 3)
        finally:
            await lease.release()

    async def _active(self, stop: asyncio.Event, lease: LeaderLease) -> None:
        assert self.kv is not None
        self.groups = await load_groups(self.bus.js)
        self.state = await load_state(self.bus.js)
        await self.apply_config(await load_config(self.kv))
        await deadman.seed_last_success(self)
        subs: dict[str, Any] = {
            "runs": await self.bus.js.pull_subscribe_bind(durable=wire.NOTIFIER_RUNS_CONSUMER, stream=wire.STREAM_RUNS),
            "alerts": await self.bus.js.pull_subscribe_bind(durable=wire.NOTIFIER_ALERTS_CONSUMER,
                                                            stream=wire.STREAM_ALERTS),
            "deliver": await self.bus.js.pull_subscribe_bind(durable=wire.DELIVER_CONSUMER, stream=wire.STREAM_NOTIFY),
        }
        until = asyncio.Event()  # stop, or the lease lost
        tasks = [
            asyncio.create_task(self._follow_config(until)),
            asyncio.create_task(self._pull(until, subs, "runs", wire.STREAM_RUNS, wire.NOTIFIER_RUNS_CONSUMER, 256,
                                           lambda msgs: intake.on_run_events(self, msgs))),
            asyncio.create_task(self._pull(until, subs, "alerts", wire.STREAM_ALERTS, wire.NOTIFIER_ALERTS_CONSUMER,
                                           256, lambda msgs: intake.on_alerts(self, msgs),
                                           after=lambda: intake.flush_due(self))),
            asyncio.create_task(deliver.deliver_loop(self, until, subs)),
            asyncio.create_task(deadman.loop(self, until)),
            asyncio.create_task(self._keep_lease(stop, lease, until)),
        ]
        self.ready.set()
        try:
            await until.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs.values():
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            for sender in self.senders.values():
                with contextlib.suppress(Exception):
                    await sender.close()
            self.senders, self.config = {}, None

    async def _keep_lease(self, stop: asyncio.Event, lease: LeaderLease, until: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.leader_ttl / 3)
            if stop.is_set():
                break
            if not await lease.renew():  # lost, or the bus was away longer than the lease
                break
        until.set()

    async def apply_config(self, config: NotificationsConfig | None) -> None:
        """New senders for a new config. A channel whose secret is missing or malformed is
        reported and marked broken; the others keep working."""
        if config is None or config == self.config:
            return
        old = self.senders
        self.config = self.last_config = config
        self.senders, self.broken = {}, {}
        for name, channel in config.channels.items():
            for problem in channel_problems(name, channel):
                self.broken[name] = problem
                log.error("notifier: %s (deliveries to it fail and are escalated)", problem)
            bucket = None
            if isinstance(channel, SlackChannel):  # one rate limit per webhook, across config changes
                bucket = self.buckets.setdefault(name, TokenBucket(self.ns.slack_rate, self.ns.slack_burst))
            self.senders[name] = make_sender(name, channel, self.ns, bucket, self.look)
        for sender in old.values():
            with contextlib.suppress(Exception):
                await sender.close()
        log.info("notifier: config applied: channels %s, %d rule(s)", ", ".join(config.channels) or "none",
                 len(config.rules))

    async def _follow_config(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                assert self.kv is not None
                watcher = await self.kv.watch(wire.NOTIFY_CONFIG_KEY)
                async for entry in watcher:
                    if entry is not None and entry.value:
                        await self.apply_config(await load_config(self.kv))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier: config watch failed (%r); retrying", exc)
                await asyncio.sleep(2)

    async def _pull(self, stop: asyncio.Event, subs: dict[str, Any], name: str, stream: str, durable: str,
                    batch: int, handle: Callable[[list[Msg]], Awaitable[None]],
                    after: Callable[[], Awaitable[None]] | None = None) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                if subs.get(name) is None:
                    subs[name] = await self.bus.js.pull_subscribe_bind(durable=durable, stream=stream)
                try:
                    msgs = await subs[name].fetch(batch, timeout=self.ns.notify_tick)
                except TimeoutError:
                    msgs = []
                if msgs:
                    await handle(msgs)
                if after is not None:
                    await after()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier: %s loop failed (%r); re-subscribing in %.1fs", name, exc, delay, exc_info=True)
                subs[name] = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
