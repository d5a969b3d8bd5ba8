"""The dashboard service: the ASGI app served by uvicorn inside the cropcron process, next to the
other services (`cropcron dashboard`, `cropcron serve dashboard`, part of `cropcron up`).

It binds 127.0.0.1:8080 by default. If that port is taken it says so and takes a free one (so
`cropcron up` always starts); the URL is logged and published in its heartbeat (`url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from services.dashboard.app import build_app
from services.dashboard.auth import Auth
from services.dashboard.backend import Backend
from services.dashboard.live import LiveEvents
from services.dashboard.settings import DashboardSettings, load_token, load_viewer_token
from shared.bus import Bus
from shared.catalog import Catalog

log = logging.getLogger("cropcron.dashboard")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: cropcron's process owns SIGINT/SIGTERM and stops
    every service through the shared stop event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class DashboardService:
    def __init__(self, bus: Bus, catalog: Catalog, settings: DashboardSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()
        token = load_token(self.settings)  # TokenError (clear message) before anything starts
        viewer = load_viewer_token(self.settings, token)
        self.live = LiveEvents(bus, self.settings.sse_queue, self.settings.sse_keepalive)
        self.backend = Backend(bus, catalog, self.settings)
        self.app = build_app(self.backend, self.live,
                             Auth(token, self.settings.session_ttl, self.settings.login_attempts, viewer),
                             self.settings.secure_cookie)
        self.url: str | None = None
        self.ready = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "clients": len(self.live.clients), "events": self.live.delivered}

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES) or not self.settings.port_fallback:
                sock.close()
                raise RuntimeError(f"dashboard cannot listen on {host}:{port}: {exc.strerror}") from None
            sock.bind((host, 0))
            log.warning("dashboard: port %d on %s is taken; using port %d instead "
                        "(set CROPCRON_DASHBOARD_PORT to choose)", port, host, sock.getsockname()[1])
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        await self.live.start()
        sock = self._bind()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                server_header=False, proxy_headers=False, timeout_graceful_shutdown=3)
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # raises why it could not start
                    raise RuntimeError("the dashboard's HTTP server ended while starting")
                await asyncio.sleep(0.02)
            source = ("CROPCRON_DASHBOARD_TOKEN_FILE " + str(self.settings.token_file)
                      if self.settings.token_file and not self.settings.token else "CROPCRON_DASHBOARD_TOKEN")
            log.info("dashboard: open %s (log in with the token from %s)", self.url, source)
            self.ready.set()
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if serving.done():
                serving.result()
                raise RuntimeError("the dashboard's HTTP server stopped")
        finally:
            await self.live.stop()  # ends the event streams, so the server's shutdown does not wait on them
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
            sock.close()
