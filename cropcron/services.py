"""Wiring: start the named services in this process against one NATS connection.

`cropcron up` runs them all here; `cropcron timer|runner|history` run one each (compose, scale-out).
A service task that crashes stops the process with a non-zero exit (compose restarts it) rather
than leaving it alive but broken; a NATS connection that closes for good does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
from nats.js.errors import ServiceUnavailableError

from cropcron.direct_alert import quorum_alerts
from cropcron.endpoint import Endpoint, EndpointError, Readiness, watch_consumers
from cropcron.quorum import watch_jetstream
from services.dashboard.service import DashboardService
from services.history.migrate import migrate
from services.history.service import HistoryService
from services.history.store import create_pool
from services.notifier.service import NotifierService
from services.runner.service import RunnerService
from services.timer.service import TimerService
from services.watcher.dispatch import Dispatcher
from services.watcher.service import WatcherService
from shared import nats_auth, wire
from shared.bus import Bus, connect
from shared.catalog import Catalog
from shared.health import heartbeat_loop
from shared.settings import BusSettings, ServiceSettings
from shared.topology import await_topology, ensure_topology

log = logging.getLogger("cropcron")

# "dispatcher" alone: FileEvents -> runs without watching folders here (upload tools publish the
# events); "watcher" runs both
SERVICE_NAMES = ("timer", "runner", "history", "dashboard", "watcher", "notifier", "dispatcher")


class Service(Protocol):
    ready: asyncio.Event  # set by run() once its subscriptions and loops are live

    async def run(self, stop: asyncio.Event) -> None: ...

    def status(self) -> dict[str, Any]: ...


class ServiceFailed(RuntimeError):
    pass


@dataclass
class Link:
    """One broker connection and the catalog read through it: the services that connect as the
    same user share it (all of them without credentials; one each under `cropcron up` with
    per-service users)."""

    bus: Bus
    catalog: Catalog
    user: str | None


async def _open_links(names: list[str], settings: ServiceSettings, bus_settings: BusSettings,
                      readiness: Readiness) -> dict[str, Link]:
    """service -> its Link, connecting once per user. The operator (no credentials, or `cli`)
    creates the topology; a service user may only bind to it and waits until it exists."""
    by_user: dict[str | None, Link] = {}
    out: dict[str, Link] = {}
    for name in [*names, *(["dispatcher"] if "watcher" in names and "dispatcher" not in names else [])]:
        creds = nats_auth.from_environment(name)
        user = creds.user if creds else None
        if user not in by_user:
            bus = await connect(settings.nats_url, f"cropcron-{user or '+'.join(names)}-{settings.instance}",
                                bus_settings, creds)
            readiness.buses.append(bus)
            if user in (None, "cli"):
                await _create_topology(bus, bus_settings)
            else:
                await await_topology(bus, user)
                await _check_replicas(bus, bus_settings, user)
            catalog = Catalog(bus.js)
            await catalog.start()
            by_user[user] = Link(bus, catalog, user)
        out[name] = by_user[user]
    return out


async def _create_topology(bus: Bus, bus_settings: BusSettings) -> None:
    """ensure_topology, retried while the broker is slow to answer: on a cluster, several services
    starting at once may each be moving every stream to a new replica count (CROPCRON_REPLICAS),
    and a stream whose leader is being elected answers nothing for seconds."""
    delay = 0.5
    while True:
        try:
            await ensure_topology(bus.js, bus_settings)
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError) as exc:
            log.warning("creating the JetStream topology: no answer in time (%r); again in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _check_replicas(bus: Bus, bus_settings: BusSettings, user: str) -> None:
    """A service user may not change the topology: say so when it has another replica count than
    this process's CROPCRON_REPLICAS (docs/scale-out.md §3), and go on with it."""
    try:
        have = (await bus.js.stream_info(wire.STREAM_TRIGGERS)).config.num_replicas or 1
    except Exception as exc:  # only a hint: never a reason not to start
        log.debug("replica check: %r", exc)
        return
    if have != bus_settings.replicas:
        log.warning("CROPCRON_REPLICAS is %d but the streams have %d copies; NATS user %s may not change that: "
                    "run `cropcron replicas %d` as the operator (docs/scale-out.md)", bus_settings.replicas, have,
                    user, bus_settings.replicas)


def _catalog_services(names: list[str], links: dict[str, Link], settings: ServiceSettings,
                      bus_settings: BusSettings) -> dict[str, Service]:
    """The services that need only the bus and the catalog (kept apart from run_services so that
    adding one does not push its complexity past the lint cap)."""
    services: dict[str, Service] = {}
    if "runner" in names:
        services["runner"] = RunnerService(links["runner"].bus, links["runner"].catalog, settings, bus_settings)
    if "timer" in names:
        services["timer"] = TimerService(links["timer"].bus, links["timer"].catalog, settings)
    if "watcher" in names:  # CROPCRON_WATCHER_* settings
        services["watcher"] = WatcherService(links["watcher"].bus, links["watcher"].catalog, settings)
    if "watcher" in names or "dispatcher" in names:  # CROPCRON_DISPATCH_* settings
        services["dispatcher"] = Dispatcher(links["dispatcher"].bus, links["dispatcher"].catalog, settings)
    if "notifier" in names:  # CROPCRON_NOTIFY_* settings
        services["notifier"] = NotifierService(links["notifier"].bus, links["notifier"].catalog, settings)
    if "dashboard" in names:  # CROPCRON_DASHBOARD_* settings
        services["dashboard"] = DashboardService(links["dashboard"].bus, links["dashboard"].catalog)
    return services


def _with_url(svc: Service, metrics_url: str) -> Callable[[], dict[str, Any]]:
    return lambda: {**svc.status(), "metrics_url": metrics_url}


# the durable consumers each service consumes: their pending/redelivered counts become gauges
CONSUMERS: dict[str, list[tuple[str, str]]] = {
    "runner": [(wire.STREAM_TRIGGERS, wire.runner_consumer(band)) for band in wire.BANDS],
    "history": [(wire.STREAM_RUNS, wire.HISTORY_CONSUMER), (wire.STREAM_ALERTS, wire.HISTORY_ALERTS_CONSUMER),
                (wire.STREAM_FILES, wire.HISTORY_FILES_CONSUMER)],
    "dispatcher": [(wire.STREAM_FILES, wire.DISPATCH_CONSUMER)],
    "notifier": [(wire.STREAM_RUNS, wire.NOTIFIER_RUNS_CONSUMER), (wire.STREAM_ALERTS, wire.NOTIFIER_ALERTS_CONSUMER),
                 (wire.STREAM_NOTIFY, wire.DELIVER_CONSUMER)],
}


async def run_services(names: list[str], settings: ServiceSettings, stop: asyncio.Event,
                       ready: Callable[[], None] | None = None,
                       on_http: Callable[[str], None] | None = None) -> None:
    """Run the named services until `stop`. The health/metrics endpoint listens first (its URL
    goes to `on_http`), so /healthz says "starting" while NATS is still being reached."""
    readiness = Readiness(list(names))
    endpoint = Endpoint(settings, readiness)
    try:
        url = await endpoint.start()
    except EndpointError as exc:
        raise ServiceFailed(str(exc)) from None
    if on_http is not None:
        on_http(url)
    try:
        await _run(names, settings, stop, ready, readiness, url)
    finally:
        readiness.stopping = True
        await endpoint.stop()


def _start(services: dict[str, Service], links: dict[str, Link], settings: ServiceSettings, url: str,
           stop: asyncio.Event, readiness: Readiness) -> dict[asyncio.Task[Any], str]:
    """Each service's loop, heartbeat and consumer gauges, and the process's JetStream probe; a
    task that ends stops the process."""
    tasks: dict[asyncio.Task[Any], str] = {
        asyncio.create_task(svc.run(stop), name=name): name for name, svc in services.items()}
    if readiness.buses:
        probe = watch_jetstream(readiness.buses[0], readiness.jetstream, settings.jetstream_check, stop)
        tasks[asyncio.create_task(probe)] = "jetstream-probe"
    for name, svc in services.items():
        # the heartbeat carries the endpoint's URL, so an operator (or a test) finds a port chosen at random
        beat = heartbeat_loop(links[name].bus.js, name, settings.instance, settings.heartbeat_interval,
                              _with_url(svc, url + "metrics"), stop)
        tasks[asyncio.create_task(beat)] = f"{name}-heartbeat"
        if CONSUMERS.get(name):
            gauges = watch_consumers(links[name].bus, CONSUMERS[name], settings.metrics_interval, stop)
            tasks[asyncio.create_task(gauges)] = f"{name}-metrics"
    return tasks


async def _run(names: list[str], settings: ServiceSettings, stop: asyncio.Event, ready: Callable[[], None] | None,
               readiness: Readiness, url: str) -> None:
    bus_settings = BusSettings()
    links: dict[str, Link] = {}
    pool = None
    try:
        links = await _open_links(names, settings, bus_settings, readiness)
        services: dict[str, Service] = {}
        if "history" in names:
            if not settings.database_url:
                raise ServiceFailed("history needs DATABASE_URL (e.g. postgresql://user@host:5432/db)")
            pool = await create_pool(settings.database_url)
            await migrate(pool)
            history = links["history"]
            services["history"] = HistoryService(
                history.bus, pool, settings, retention_days=lambda: history.catalog.system.history_retention / 86400)
        services.update(_catalog_services(names, links, settings, bus_settings))
        notifier = services.get("notifier")
        if isinstance(notifier, NotifierService):  # a lost quorum is told straight to the channels
            readiness.jetstream.listeners.append(quorum_alerts(notifier, settings.instance, settings.quorum_alert_after))
        readiness.add(dict(services))
        tasks = _start(services, links, settings, url, stop, readiness)
        buses = {id(link.bus): link.bus for link in links.values()}.values()
        closed = asyncio.ensure_future(asyncio.wait([asyncio.ensure_future(b.health.closed.wait()) for b in buses],
                                                    return_when=asyncio.FIRST_COMPLETED))
        # "ready" only once every service is live (subscribed, fetching), not merely started;
        # a service that fails while starting ends the wait too
        live: asyncio.Future[Any] = asyncio.gather(*(svc.ready.wait() for svc in services.values()))
        starting: list[asyncio.Future[Any]] = [live, closed, *tasks]
        await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
        if ready is not None and live.done():
            ready()
        log.info("cropcron: %s running (instance %s)", ", ".join(names), settings.instance)
        done, _ = await asyncio.wait([*tasks, closed], return_when=asyncio.FIRST_COMPLETED)
        failure = None
        if closed in done and not stop.is_set():
            failure = "the NATS connection closed"
        for task in done:
            if task is not closed and not task.cancelled() and task.exception() is not None:
                failure = f"{tasks[task]} failed: {task.exception()!r}"
                log.error("cropcron: %s", failure, exc_info=task.exception())
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        closed.cancel()
        live.cancel()
        if failure:
            raise ServiceFailed(failure)
    finally:
        for link in {id(link.bus): link for link in links.values()}.values():
            await link.catalog.stop()
            await link.bus.close()
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)
