"""NATS connections and JetStream publishing (the topology itself: shared/topology.py).

connect(): reconnects forever (nats-py's default gives up after ~2 minutes, RELIABILITY §1.9),
pings every 10 s so a silent dead path is noticed in ~30 s, and exposes health.
connect_once(): one attempt with a clear error, for the CLI.
publish_all/publish_until_acked/fetch_batches/ack_confirmed/retry_transient: the JetStream habits every
service shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import wire
from shared.errors import UserError
from shared.nats_auth import Credentials, CredentialsError
from shared.settings import BusSettings

log = logging.getLogger("cropcron.bus")

T = TypeVar("T")

# What a reconnecting or restoring broker answers for a while (timeouts, "no responders",
# JetStream 503 while it recovers its streams): worth retrying, never worth crashing a service.
TRANSIENT_ERRORS = (nats.errors.Error, TimeoutError, OSError)


class Stopping(Exception):
    """retry_transient gave up because the service is stopping."""


# 2.12: atomic batch publish (apply writes a config all-or-nothing); nats-py's KV buckets also ask
# for per-message TTLs (2.11). An older server silently ignores settings it does not know (a
# Debian 2.9 dropped a consumer filter), so an old server is refused at connect, not discovered
# later as lost or misrouted work.
MIN_SERVER_VERSION = (2, 12)


class BadNatsUrl(UserError):
    """NATS_URL is not one server address or a comma-separated list of them."""


class IncompatibleBroker(RuntimeError):
    """The NATS server at the URL cannot run cropcron (too old, or JetStream off)."""


def servers_of(url: str) -> list[str]:
    """NATS_URL's servers: one URL, or several separated by commas (the nodes of a cluster, this
    host's own first: the client tries them in that order and fails over to the next)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise BadNatsUrl(f"NATS_URL names no server ({url!r}): give nats://host:port, or several separated by commas")
    for server in servers:
        if not re.fullmatch(r"(nats|tls|ws|wss)://\S+|[\w.-]+(:\d+)?", server):
            raise BadNatsUrl(f"NATS_URL has {server!r}, which is not a server address: give nats://host:port, "
                             "or several separated by commas")
    return servers


def check_server(nc: Client, url: str) -> None:
    """`url`: what was asked for (one or several); the message names the server that answered."""
    if nc.connected_url is not None:
        url = f"{nc.connected_url.scheme}://{nc.connected_url.hostname}:{nc.connected_url.port}"
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    version = str(info.get("version", "?"))
    match = re.match(r"(\d+)\.(\d+)", version)
    need = ".".join(map(str, MIN_SERVER_VERSION))
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_SERVER_VERSION:
        raise IncompatibleBroker(f"the NATS server at {url} is nats-server {version}; cropcron needs {need} or "
                                 "newer with JetStream (nats-server -js)")
    if not info.get("jetstream"):  # the INFO flag is absent when JetStream is off
        raise IncompatibleBroker(f"the NATS server at {url} (nats-server {version}) has JetStream off; start it "
                                 "with -js or a jetstream {} block")


@dataclass
class Health:
    connected: bool = False
    reconnects: int = 0
    last_error: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    health: Health

    async def barrier(self, timeout: float = 5.0) -> None:
        """Return once the server has processed every command this connection sent before, new
        subscriptions included. Not nc.flush(): nats-py 2.16 writes flush's PING straight to the
        socket, ahead of SUBs still queued for its flusher task, so the PONG can come back before a
        subscription exists (CI once got "no responders" from history right after it was ready).
        A message to ourselves is queued behind those commands, and one connection's commands are
        processed in order."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(inbox, b"")
            await sub.next_msg(timeout)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        # Not drain(): the services have already stopped and unsubscribed what they consume, and
        # drain() waits on every callback subscription's queue, which a stopped service no longer
        # empties (5 s lost and a stray CancelledError logged at every shutdown). A flush is what
        # matters: the server has everything published so far before the connection closes.
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            await self.nc.close()


def _auth_options(creds: Credentials | None) -> dict[str, Any]:
    if creds is None:
        return {}
    # replies come back on the user's own inbox prefix: its permissions allow only that one
    return {"user": creds.user, "password": creds.password, "inbox_prefix": creds.inbox_prefix}


def _refused(exc: BaseException, creds: Credentials | None, url: str) -> CredentialsError | None:
    """A connection refused for its credentials: retrying cannot help."""
    if "authorization violation" in str(exc).lower() or "authentication" in str(exc).lower():
        who = f"user {creds.user!r}" if creds else "a connection without credentials"
        return CredentialsError(f"the NATS server at {url} refused {who}: wrong password, unknown user, or "
                                "credentials required (CROPCRON_NATS_USER / CROPCRON_NATS_PASSWORD_FILE)")
    return None


async def connect(url: str, name: str, settings: BusSettings | None = None,
                  creds: Credentials | None = None) -> Bus:
    """Connect, retrying the first connection forever too (the broker may start after us); a
    refusal of the credentials ends it at once (CredentialsError). `url` may name several servers
    (comma-separated, the nodes of a cluster): tried in that order, and on a lost connection the
    client fails over to the next one (and to the nodes the cluster announces)."""
    settings = settings or BusSettings()
    servers = servers_of(url)
    health = Health()

    async def on_disconnect() -> None:
        health.connected = False
        if not (nc.is_closed or nc.is_draining):  # our own close is not news
            log.warning("nats disconnected (%s); reconnecting", name)

    async def on_reconnect() -> None:
        health.connected = True
        health.reconnects += 1
        log.info("nats reconnected (%s) to %s", name, nc.connected_url.netloc if nc.connected_url else "?")

    async def on_error(exc: Exception) -> None:
        health.last_error = repr(exc)
        if "permissions violation" in str(exc).lower():
            # a denied publish or subscribe: the server logged it too; the service goes on
            log.warning("nats (%s, user %s): %s", name, creds.user if creds else "-", exc)
        else:
            log.debug("nats error (%s): %r", name, exc)

    async def on_closed() -> None:
        health.connected = False
        health.closed.set()

    delay = 0.2
    while True:
        nc = Client()
        try:
            await nc.connect(
                servers=servers,
                # in the order given: an operator lists the node on the service's own host first
                dont_randomize=True,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                ping_interval=settings.ping_interval,
                max_outstanding_pings=3,
                connect_timeout=2,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
                closed_cb=on_closed,
                **_auth_options(creds),
            )
            break
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            refused = _refused(exc, creds, url)
            if refused is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise refused from None
            log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", url, exc or type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        check_server(nc, url)
    except IncompatibleBroker:
        await nc.close()
        raise
    health.connected = True
    return Bus(nc=nc, js=nc.jetstream(timeout=settings.request_timeout), health=health)


async def connect_once(url: str, name: str, timeout: float = 3.0, creds: Credentials | None = None) -> Bus:
    """For short-lived commands (the CLI): one attempt, a clear error instead of waiting forever."""
    servers = servers_of(url)
    nc = Client()
    seen: list[Exception] = []

    async def quiet(exc: Exception) -> None:  # the default callback logs a traceback per attempt
        seen.append(exc)  # (a refused password shows only here; the connect ends "no servers")

    try:
        # (allow_reconnect=False or max_reconnect_attempts=0 make nats-py retry forever on a
        # refused first connection; one retry with a short wait gives a prompt NoServersError)
        await asyncio.wait_for(nc.connect(servers=servers, name=name, connect_timeout=int(max(timeout, 1)),
                                          max_reconnect_attempts=1, reconnect_time_wait=0.1,  # type: ignore[arg-type]
                                          dont_randomize=True, error_cb=quiet, **_auth_options(creds)),
                               timeout * 2 * len(servers))
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        for cause in (exc, *seen):
            refused = _refused(cause, creds, url)
            if refused is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise refused from None
        raise ConnectionError(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    try:
        check_server(nc, url)
    except IncompatibleBroker:
        await nc.close()
        raise
    return Bus(nc=nc, js=nc.jetstream(timeout=timeout * 3), health=Health(connected=True))


async def publish_all(bus: Bus, items: list[tuple[str, bytes, str]], timeout: float = 10.0,
                      ) -> list[tuple[str, bytes, str]]:
    """Pipelined JetStream publishes (one PubAck wait for the lot); returns those that failed."""
    futures: list[asyncio.Future[Any] | None] = []
    for subject, payload, msg_id in items:
        try:
            futures.append(await bus.js.publish_async(subject, payload, headers={wire.HEADER_MSG_ID: msg_id}))
        except Exception as exc:
            log.debug("publish to %s failed: %r", subject, exc)
            futures.append(None)
    # one wait for the lot (a wait_for per future costs a task each); a PubAck that never comes
    # (broker restarting) must not hang the caller
    live = [f for f in futures if f is not None]
    if live:
        _, late = await asyncio.wait(live, timeout=timeout)
        for f in late:
            f.cancel()
    failed = []
    for item, fut in zip(items, futures, strict=True):
        if fut is None or fut.cancelled() or fut.exception() is not None:
            failed.append(item)
    return failed


async def fetch_batches(bus: Bus, stream: str, durable: str, batch: int, timeout: float, stop: asyncio.Event,
                        what: str) -> AsyncIterator[list[Msg]]:
    """Batches from a durable pull consumer until `stop`. Any fetch error (a reconnect: a pull
    subscription can go quiet after one, nats.py #504) drops the subscription and binds a new one,
    backing off up to 5 s; an empty fetch is a timeout, not an error."""
    psub: JetStreamContext.PullSubscription | None = None
    delay = 0.2
    while not stop.is_set():
        try:
            if psub is None:
                psub = await bus.js.pull_subscribe_bind(durable=durable, stream=stream)
            msgs = await psub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats' own TimeoutError subclasses it
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: fetch failed (%r); re-subscribing in %.1fs", what, exc, delay)
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()
            psub = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        yield msgs


async def publish_until_acked(bus: Bus, items: list[tuple[str, bytes, str]], what: str,
                              stop: asyncio.Event | None = None) -> list[tuple[str, bytes, str]]:
    """publish_all, retried (0.2 s doubling to 5 s) until every PubAck arrives: the broker may be
    restarting. Returns what is still unacknowledged, which is non-empty only if `stop` was set."""
    delay = 0.2
    while items:
        failed = await publish_all(bus, items)
        if not failed or (stop is not None and stop.is_set()):
            return failed
        log.warning("%s: %d of %d publishes not acknowledged; retrying in %.1fs", what, len(failed), len(items), delay)
        items = failed
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    return []


async def ack_confirmed(msg: Msg, within: float, what: str, stop: asyncio.Event | None = None) -> bool:
    """Ack `msg` and wait for the broker to confirm it, retrying (0.2 s doubling to 2 s) for up to
    `within` seconds (the consumer's ack_wait: by then the message is out again anyway), or until
    `stop` is set. A plain ack is fire-and-forget: on a cluster, one sent as the consumer's leader
    dies is lost, and the new leader gives the message out again after ack_wait (a job that
    finished runs twice, docs/scale-out.md §5); retried, it reaches the new leader. False if it
    was never confirmed (it may have been recorded all the same)."""
    deadline = asyncio.get_running_loop().time() + within
    delay = 0.2
    while True:
        try:
            await msg.ack_sync(timeout=min(2.0, max(within / 3, 0.1)))
            return True
        except TRANSIENT_ERRORS as exc:
            if (stop is not None and stop.is_set()) or asyncio.get_running_loop().time() + delay >= deadline:
                log.warning("%s: the broker did not confirm the ack (%r); it may deliver the message again",
                            what, exc)
                return False
            log.debug("%s: ack not confirmed (%r); again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def retry_transient(op: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event | None = None) -> T:
    """`op()` until it succeeds, retrying transient bus errors (0.2 s doubling to 5 s); raises
    Stopping if `stop` is set while it is failing. Other errors propagate."""
    delay = 0.2
    while True:
        try:
            return await op()
        except TRANSIENT_ERRORS as exc:
            if stop is not None and stop.is_set():
                raise Stopping(what) from exc
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

