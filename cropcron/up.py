"""`cropcron up`: everything in one process, with an embedded nats-server and Postgres unless
NATS_URL / DATABASE_URL are set (docs/unattended.md).

Order: the data dir's lock (one `up` per data dir, cropcron/datadir_lock.py), then the embedded
servers, runtime.json, the config, and the services with a supervisor that restarts a dead
server (cropcron/supervise.py). Exit 0 after Ctrl-C/SIGTERM; 1 when a server cannot be brought
back or a service fails, so that systemd or compose restarts `up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cropcron import cli_alerts, commands
from cropcron.child import ChildError, ChildProcess, EmbeddedError
from cropcron.direct_alert import send_direct
from cropcron.diskguard import DiskGuard, disk_reserve
from cropcron.embedded import EmbeddedNats, read_runtime, remove_runtime, write_runtime
from cropcron.runner_pool import RunnerPool, processes_from_env
from cropcron.services import SERVICE_NAMES, run_services
from cropcron.supervise import Supervisor, restart_limit
from services.dashboard.settings import ensure_token_file
from services.notifier.rules import DELIVERED_TO
from shared import nats_auth, wire
from shared.bus import Bus, connect, publish_until_acked
from shared.config import Config
from shared.events import Alert
from shared.nats_auth import Credentials, authorization_block, ensure_users
from shared.notify_config import NotificationsConfig
from shared.settings import ServiceSettings

log = logging.getLogger("cropcron")

START_TIMEOUT = 60.0  # a first start may create the Postgres cluster or recover a large store
DIRECT_AFTER = 10.0  # seconds an urgent alert waits for the bus before going straight to its channels
SHUTDOWN_GRACE = 10.0  # for the services to wind down after a server is lost for good (without a
# broker, their goodbyes only time out)


class AlertBus:
    """Raises the supervisor's alerts on its own connection, which waits out a broker restart."""

    def __init__(self, url: str, notifications: NotificationsConfig) -> None:
        self.url = url
        self.notifications = notifications  # for alerts the bus cannot take in time
        self.bus: Bus | None = None
        self.lock = asyncio.Lock()
        self.closing = asyncio.Event()

    async def _publish(self, alert: Alert) -> None:
        async with self.lock:
            if self.bus is None:
                self.bus = await connect(self.url, "cropcron-up-supervisor", creds=operator())
        item = (wire.alert_subject(alert.level, alert.kind), alert.to_bytes(), alert.id)
        if await publish_until_acked(self.bus, [item], "cropcron up: raising an alert", self.closing):
            log.warning("cropcron up: stopping before the alert %r reached the bus", alert.summary)
        else:
            log.info("cropcron up: alert raised: %s", alert.summary)

    async def raise_alert(self, alert: Alert) -> None:
        await self._publish(alert)

    async def raise_urgent(self, alert: Alert) -> None:
        """Through the bus if it takes the alert within DIRECT_AFTER seconds, else straight to the
        channels too (a broker with a full disk stores nothing); the alert still goes to the bus
        for history, naming the channels that had it, which the notifier then skips."""
        publish = asyncio.ensure_future(self._publish(alert))
        done, _ = await asyncio.wait({publish}, timeout=DIRECT_AFTER)
        if done:
            return publish.result()
        publish.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publish
        sent = await send_direct(self.notifications, alert)
        await self._publish(alert.model_copy(update={"details": {**alert.details, DELIVERED_TO: sent}}))

    async def close(self) -> None:
        self.closing.set()
        if self.bus is not None:
            await self.bus.close()


def redact(url: str) -> str:
    """The URL without its password (runtime.json is readable by every local user)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}@{host}"))


async def _start(child: ChildProcess) -> None:
    try:
        child.spawn()
        await child.wait_ready(START_TIMEOUT)
    except ChildError as exc:
        raise EmbeddedError(f"the embedded {child.name} did not start: {exc}") from None


async def _start_servers(data_dir: Path, children: list[ChildProcess]) -> tuple[str, str]:
    nats_url = os.environ.get("NATS_URL")
    database_url = os.environ.get("DATABASE_URL")
    postgres = None
    if not database_url:
        from cropcron.embedded_pg import EmbeddedPostgres

        postgres = EmbeddedPostgres(data_dir)  # first: it refuses a data dir its user cannot reach
        postgres.prepare()
    if not nats_url:
        # its own broker: one user per service and for outside programs, least privilege each
        # (shared/permissions.py); passwords generated once into the data dir
        users = users_dir(data_dir)
        authorization = authorization_block(ensure_users(users), users)
        os.environ["CROPCRON_NATS_CREDENTIALS_DIR"] = str(users)  # each service connects as its own user
        nats = EmbeddedNats(data_dir, authorization=authorization)
        await _start(nats)
        children.append(nats)
        nats_url = nats.url
    if postgres is not None:
        await _start(postgres)
        children.append(postgres)
        database_url = postgres.url
    assert database_url is not None
    return nats_url, database_url


def _metrics_url(data_dir: Path, url: str) -> None:
    """`up`'s health/metrics endpoint: logged, and kept in runtime.json beside the NATS URL."""
    write_runtime(data_dir, **{**(read_runtime(data_dir) or {}), "metrics_url": url + "metrics"})
    log.info("cropcron up: metrics on %smetrics, health on %shealthz", url, url)


def operator() -> Credentials | None:
    """`up`'s own connections (apply, its alerts) are the operator's: user `cli`."""
    return nats_auth.from_environment("cli")


def users_dir(data_dir: Path) -> Path:
    return data_dir / "nats-users"


async def _apply(nats_url: str, config: Config, base_dir: Path) -> tuple[list[str], list[str], list[str]]:
    bus = await commands.open_bus(nats_url, operator())
    try:
        added, changed, removed = await commands.apply(bus, config, base_dir)
        await cli_alerts.apply_notifications(bus, config)
        cli_alerts.warn_secrets(config)
    finally:
        await bus.close()
    return added, changed, removed


async def _serve(stop: asyncio.Event, supervisor: Supervisor, settings: ServiceSettings, data_dir: Path,
                 guard: DiskGuard | None = None, runner_processes: int = 1) -> int:
    watch = asyncio.create_task(supervisor.run(stop))
    disk = asyncio.create_task(guard.run(stop)) if guard is not None else None
    # more runner processes than the one in this process (CROPCRON_RUNNER_PROCESSES, half the cores)
    runners = asyncio.create_task(RunnerPool(runner_processes - 1, settings.instance, settings.kill_grace).run(stop))
    services = asyncio.create_task(run_services(list(SERVICE_NAMES), settings, stop,
                                                on_http=lambda url: _metrics_url(data_dir, url)))
    done, _ = await asyncio.wait({watch, services}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    if watch in done and watch.exception() is not None:
        log.error("cropcron up: %s; stopping", watch.exception())
        # the services wind down without their broker or database as well as they can
        done, _ = await asyncio.wait({services}, timeout=SHUTDOWN_GRACE)
        if not done:
            log.error("cropcron up: the services did not stop within %.0fs; leaving them", SHUTDOWN_GRACE)
            services.cancel()
        await asyncio.gather(services, return_exceptions=True)
        await watch  # raises ComponentFailed: exit 1 with its message
    await watch
    if disk is not None:
        await disk
    await runners
    await services  # raises ServiceFailed when a service failed
    return 0


async def main(config_path: str, base_dir: Path, config: Config, data_dir: Path) -> int:
    """`base_dir`: the config file's directory, which relative paths in it are relative to."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: list[ChildProcess] = []
    alerts: AlertBus | None = None
    limit = restart_limit()  # a bad CROPCRON_RESTART_LIMIT (or disk reserve) is refused before anything starts
    runner_processes = processes_from_env()
    reserve = disk_reserve()
    try:
        nats_url, database_url = await _start_servers(data_dir, children)
        # the CLI finds the broker here, and the operator's credentials (files only `up`'s user reads)
        write_runtime(data_dir, nats_url=nats_url, database_url=redact(database_url),
                      **({"nats_users": os.environ["CROPCRON_NATS_CREDENTIALS_DIR"]}
                         if os.environ.get("CROPCRON_NATS_CREDENTIALS_DIR") else {}))
        # for the services started below (the runner strips DATABASE_URL from jobs' environment;
        # NATS_URL lets a job itself call `cropcron run ...`); the data dir too, so that the
        # watcher's record follows --data-dir rather than the default data dir
        os.environ.update(NATS_URL=nats_url, DATABASE_URL=database_url, CROPCRON_DATA_DIR=str(data_dir))
        # the dashboard's access token: <data-dir>/dashboard-token unless CROPCRON_DASHBOARD_TOKEN[_FILE] is set
        ensure_token_file(data_dir)
        # the health/metrics endpoint takes a free port if CROPCRON_HTTP_PORT's is taken
        settings = ServiceSettings().model_copy(update={"http_port_fallback": True})  # type: ignore[call-arg]
        added, changed, removed = await _apply(nats_url, config, base_dir)
        log.info("cropcron up: NATS %s, data in %s; config %s applied (%d jobs: %d added, %d changed, %d removed). "
                 "Try `cropcron jobs` and `cropcron history`; Ctrl-C stops.", nats_url, data_dir, config_path,
                 len(config.jobs), len(added), len(changed), len(removed))
        alerts = AlertBus(nats_url, config.notifications)
        guard = DiskGuard(data_dir, children, reserve, alerts.raise_urgent)
        supervisor = Supervisor(children, alerts.raise_alert, limit, hold=guard.hold)
        return await _serve(stop, supervisor, settings, data_dir, guard, runner_processes)
    finally:
        remove_runtime(data_dir)
        if alerts is not None:
            await alerts.close()
        for child in reversed(children):  # Postgres first: the broker outlives every writer
            child.stop()
