"""The ASGI app: routes, the access guard, security headers, error handlers.

The guard is plain ASGI middleware (not BaseHTTPMiddleware) so the event stream is passed through
untouched. Its order of checks: public paths; then, for a state-changing method, the cross-site
check (even before login, so a forged login is refused too); then authentication; then the
CSRF token for cookie sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.dashboard import api, pages
from services.dashboard.auth import OPERATOR, SAFE_METHODS, Auth, cross_site, csrf_ok
from services.dashboard.backend import Backend
from services.dashboard.errors import HANDLERS, error_response
from services.dashboard.live import LiveEvents
from shared.i18n import resolve_locale, translator

HERE = Path(__file__).resolve().parent
PUBLIC = ("/login", "/static/")

# Everything from this origin only: no CDN, no inline script (a stored string can never run).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


class Guard:
    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("app", self.app)  # error pages render with the app's templates
        request = Request(scope, receive)
        path = request.url.path

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
                if not path.startswith("/static/"):
                    headers.setdefault("cache-control", "no-store")
            await send(message)

        response = self._check(request, path)
        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _check(self, request: Request, path: str) -> Response | None:
        changing = request.method not in SAFE_METHODS
        if changing:
            why = cross_site(request)
            if why:
                return error_response(request, 403, why)
        if path.startswith(PUBLIC):
            return None
        principal = self.auth.principal(request)
        if principal is None:
            if path.startswith("/api/") or request.method != "GET":
                return error_response(request, 401, "authentication required: log in, or send "
                                      "'Authorization: Bearer <token>'")
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        request.scope.setdefault("state", {})["principal"] = principal
        if changing and not csrf_ok(principal, request):
            return error_response(request, 403, "missing or wrong CSRF token (X-CSRF-Token)")
        if changing and principal.role != OPERATOR and path != "/logout":
            return error_response(request, 403, "read-only access: this token may view, not act")
        return None


def build_app(backend: Backend, live: LiveEvents, auth: Auth, secure_cookie: bool = False) -> Any:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             extensions=["jinja2.ext.i18n"])
    templates = Jinja2Templates(env=env)

    def locale_of() -> str:  # the applied system.locale, followed live (CROPCRON_LOCALE overrides)
        return resolve_locale(backend.catalog.system.locale)

    env.install_gettext_callables(  # type: ignore[attr-defined]  # added by the i18n extension
        gettext=lambda message: translator(locale_of()).gettext(message),
        ngettext=lambda one, many, n: translator(locale_of()).gettext(one if n == 1 else many), newstyle=True)
    templates.env.globals["locale"] = locale_of
    templates.env.filters.update(pages.filters(locale_of))
    # gzip (not the event stream, which Starlette leaves alone): the vendored chart library is
    # 51 KB raw, ~23 KB compressed. BREACH needs cross-site requests carrying the session, which
    # the SameSite=Strict cookie never does.
    app = Starlette(routes=[*api.ROUTES, *pages.ROUTES,
                            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")],
                    middleware=[Middleware(GZipMiddleware, minimum_size=1000)],
                    exception_handlers=HANDLERS)
    app.state.backend = backend
    app.state.live = live
    app.state.auth = auth
    app.state.templates = templates
    app.state.locale_of = locale_of
    app.state.secure_cookie = secure_cookie
    return Guard(app, auth)
