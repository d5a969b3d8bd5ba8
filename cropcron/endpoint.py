"""The process's HTTP endpoint: GET /healthz (readiness) and GET /metrics (Prometheus), one port
per process (`cropcron serve NAME...` and `cropcron up`), CROPCRON_HTTP_HOST:CROPCRON_HTTP_PORT.

/healthz is 200 only while the process is connected to NATS, JetStream answers (cropcron/quorum.py:
a cluster without quorum does not) and every service in it has reported ready (subscribed,
fetching); otherwise 503, with a JSON body saying what is not. It answers from
the moment the process starts, before NATS is reached, so an orchestrator sees "starting" rather
than a refused connection. The endpoint also reads the info of the durable consumers its services
consume, every CROPCRON_METRICS_INTERVAL seconds, into the consumer gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from cropcron.healthcheck import local_url
from cropcron.quorum import JetStreamState
from shared import metrics
from shared.bus import Bus
from shared.settings import ServiceSettings

log = logging.getLogger("cropcron.endpoint")

PATHS = ("/healthz", "/metrics")
METHODS = ("GET", "HEAD")


class EndpointError(RuntimeError):
    pass


class _Readied(Protocol):
    ready: asyncio.Event


class Readiness:
    """What /healthz reports: filled in by run_services as the process comes up."""

    def __init__(self, names: list[str]) -> None:
        self.names = names  # the services this process will run, reported "starting" until built
        self.buses: list[Bus] = []  # one per broker user the process connects as
        self.services: dict[str, _Readied] = {}
        self.stopping = False
        self.jetstream = JetStreamState()  # kept up to date by cropcron.quorum.watch_jetstream
        metrics.NATS_CONNECTED.set_function(lambda: float(self.connected()))

    def connected(self) -> bool:
        return bool(self.buses) and all(b.health.connected and not b.nc.is_closed for b in self.buses)

    def add(self, services: dict[str, Any]) -> None:
        self.services = dict(services)
        self.names = list(services)
        for name, svc in services.items():
            metrics.SERVICE_READY.labels(name).set_function(_is_set(svc.ready))

    def report(self) -> tuple[bool, dict[str, Any]]:
        nats = "connected" if self.connected() else ("connecting" if not self.buses else "disconnected")
        states = {name: "ready" if name in self.services and self.services[name].ready.is_set() else "starting"
                  for name in self.names}
        problems = [] if nats == "connected" else [f"NATS {nats}"]
        unavailable = self.jetstream.report() if nats == "connected" else None
        if unavailable:
            problems.append(unavailable)
        problems += [f"{name} {state}" for name, state in states.items() if state != "ready"]
        if self.stopping:
            problems.insert(0, "stopping")
        body: dict[str, Any] = {"ready": not problems, "nats": nats, "jetstream": "unavailable" if unavailable else "ok",
                                "services": states}
        if problems:
            body["not_ready"] = problems
        return not problems, body


def _is_set(event: asyncio.Event) -> Callable[[], float]:
    return lambda: float(event.is_set())


def build_app(readiness: Readiness) -> Any:
    """A bare ASGI app: two paths, GET/HEAD only; everything else a clear 4xx in JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        response: Response
        if path not in PATHS:
            response = JSONResponse({"error": f"no such path {path[:100]!r}: this endpoint serves GET /healthz "
                                              "and GET /metrics"}, 404)
        elif method not in METHODS:
            response = JSONResponse({"error": f"{method[:20]} is not allowed on {path}: use GET"}, 405,
                                    headers={"Allow": ", ".join(METHODS)})
        elif path == "/healthz":
            ready, body = readiness.report()
            response = JSONResponse(body, 200 if ready else 503, headers={"Cache-Control": "no-store"})
        else:
            response = Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
        await response(scope, receive, send)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int, fallback: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES) or not fallback:
                raise EndpointError(f"the health/metrics endpoint cannot listen on {host}:{port}: {exc.strerror} "
                                    "(set CROPCRON_HTTP_PORT to another port, or 0 for any free one)") from None
            sock.bind((host, 0))
            log.warning("port %d on %s is taken; the health/metrics endpoint uses port %d instead "
                        "(set CROPCRON_HTTP_PORT to choose)", port, host, sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise
    sock.listen(64)
    sock.setblocking(False)
    return sock


class Endpoint:
    def __init__(self, settings: ServiceSettings, readiness: Readiness) -> None:
        self.settings = settings
        self.readiness = readiness
        self.url = ""  # http://host:port/ once listening
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> str:
        self._sock = _bind(self.settings.http_host, self.settings.http_port, self.settings.http_port_fallback)
        host, port = self._sock.getsockname()[:2]
        self.url = local_url(host, port)
        config = uvicorn.Config(build_app(self.readiness), log_level="warning", access_log=False, lifespan="off",
                                server_header=False, proxy_headers=False, timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._serving.done():
                await self.stop()
                raise EndpointError("the health/metrics endpoint's HTTP server ended while starting")
            await asyncio.sleep(0.01)
        if self.settings.http_url_file is not None:
            try:  # for `cropcron healthcheck` (compose), which cannot know a port chosen at random
                self.settings.http_url_file.write_text(json.dumps({"url": self.url}))
            except OSError as exc:
                log.warning("cannot write CROPCRON_HTTP_URL_FILE %s: %s", self.settings.http_url_file, exc.strerror)
        log.info("health on %shealthz, metrics on %smetrics", self.url, self.url)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 5)
        if self._sock is not None:
            self._sock.close()
        if self.settings.http_url_file is not None:
            with contextlib.suppress(OSError):
                self.settings.http_url_file.unlink()


async def watch_consumers(bus: Bus, consumers: list[tuple[str, str]], interval: float, stop: asyncio.Event) -> None:
    """The consumer gauges, from consumer info every `interval` s while connected. Never raises:
    a missing consumer or a slow broker only leaves the last values standing."""
    while not stop.is_set():
        if bus.health.connected:
            for stream, name in consumers:
                try:
                    info = await bus.js.consumer_info(stream, name)
                except Exception as exc:
                    log.debug("consumer info %s/%s: %r", stream, name, exc)
                    continue
                metrics.CONSUMER_PENDING.labels(stream, name).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(stream, name).set(info.num_ack_pending or 0)
                metrics.CONSUMER_REDELIVERED.labels(stream, name).set(info.num_redelivered or 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
