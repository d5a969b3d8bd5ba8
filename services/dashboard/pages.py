"""Pages for people, rendered on the server (readable without JavaScript); static/app.js adds the
live updates, the actions and the charts. Times are shown in the farm's zone (system.timezone)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from services.dashboard.auth import OPERATOR, SESSION_COOKIE, Auth
from services.dashboard.backend import Backend, Unavailable
from services.dashboard.errors import ApiError
from services.dashboard.params import FlightParams, FlightsParams, NoParams, RunsParams, parse
from services.dashboard.words import (
    CLOSE_WORDS,
    FLIGHT_WORDS,
    JS_MESSAGES,
    LEVEL_WORDS,
    REFUSAL_WORDS,
    STATE_WORDS,
    TRIGGER_WORDS,
)
from shared.events import RunState
from shared.flights import size_text
from shared.i18n import Translator, translator
from shared.names import normalise_name
from shared.queries import FlightsQuery, RefusedQuery, RunsQuery

# state as text and a symbol, never colour alone
STATE_ICONS = {"started": "▶", "succeeded": "✓", "failed": "✗", "retrying": "↻", "dead": "✖", "skipped": "⤼",
               "missed": "○", "queued": "…"}
FLIGHT_ICONS = {"open": "◔", "closed": "●", "partial": "◑"}
MAX_LOGIN_BODY = 4096
REFUSED_ON_PAGE = 20


def state_text(value: Any, _: Translator) -> str:
    word = STATE_WORDS.get(str(value))
    return f"{STATE_ICONS.get(str(value), '?')} {_(word) if word else value}" if value else "—"


def duration_text(value: Any, _: Translator) -> str:
    if value is None:
        return "—"
    seconds = float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return _("%(n)s s", n=round(seconds, 1))
    return _("%(n)s min", n=round(seconds / 60, 1))


def _percent(value: Any) -> str:
    return "—" if value is None else f"{float(value) * 100:.1f} %"


def filters(locale_of: Callable[[], str]) -> dict[str, Callable[[Any], str]]:
    """The templates' filters, in the language in force when the page renders."""
    def word(words: dict[str, str]) -> Callable[[Any], str]:
        def one(value: Any) -> str:
            known = words.get(str(value))
            return translator(locale_of())(known) if known else str(value or "—")
        return one

    return {"state": lambda v: state_text(v, translator(locale_of())), "state_word": word(STATE_WORDS),
            "trigger": word(TRIGGER_WORDS), "level": word(LEVEL_WORDS),
            "duration": lambda v: duration_text(v, translator(locale_of())),
            "percent": _percent, "bytes": size_text, "close_reason": word(CLOSE_WORDS),
            "refusal": word(REFUSAL_WORDS),
            "flight_state": lambda v: f"{FLIGHT_ICONS.get(str(v), '?')} {word(FLIGHT_WORDS)(v)}",
            # a name in a URL path or query: '/' and spaces escaped too (names are any text)
            "q": lambda v: quote(str(v), safe="")}


def js_messages(_: Translator) -> dict[str, str]:
    """What static/app.js says, in this language (English needs none: the ids are English)."""
    return {m: _.gettext(m) for m in JS_MESSAGES} if _.locale != "en" else {}


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    backend: Backend = request.app.state.backend
    principal = getattr(request.state, "principal", None)
    tz = backend.catalog.system.timezone
    _ = translator(request.app.state.locale_of())
    base = {"csrf": principal.csrf if principal else "", "tz": tz,
            "can_act": bool(principal and principal.role == OPERATOR), "role": principal.role if principal else "", "states": [s.value for s in RunState],
            "fmt": lambda v: _.when(v, tz), "fmt_short": lambda v: _.when(v, tz, short=True),
            "path": request.url.path, "js_messages": js_messages(_)}
    response: Response = request.app.state.templates.TemplateResponse(request, name, {**base, **context},
                                                                        status_code=status)
    return response


async def login_page(request: Request) -> Response:
    return _render(request, "login.html", {"next": _safe_next(request.query_params.get("next")), "error": None})


async def login(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    _ = translator(request.app.state.locale_of())
    client = request.client.host if request.client else "?"
    if auth.login_blocked(client):
        return _render(request, "login.html", {"next": "/", "error": _("too many failed attempts; wait a minute")}, 429)
    body = await request.body()
    form = parse_qs(body[:MAX_LOGIN_BODY].decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/"])[0])
    role = auth.check_token(token) if token else None
    if role is None:
        auth.login_failed(client)
        return _render(request, "login.html", {"next": target, "error": _("wrong token")}, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, auth.new_session(role), max_age=int(auth.session_ttl), httponly=True,
                        samesite="strict", secure=bool(request.app.state.secure_cookie), path="/")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _safe_next(value: str | None) -> str:
    # only a path on this site: never an open redirect
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def overview(request: Request) -> Response:
    parse(NoParams, dict(request.query_params))
    backend: Backend = request.app.state.backend
    return _render(request, "overview.html", {"o": await backend.overview()})


async def jobs(request: Request) -> Response:
    parse(NoParams, dict(request.query_params))
    backend: Backend = request.app.state.backend
    return _render(request, "jobs.html", {"jobs": await backend.jobs()})


async def job(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    name = normalise_name(request.path_params["name"])  # decoded from %-escapes by Starlette
    row = await backend.job(name)
    if row is None:
        _ = translator(request.app.state.locale_of())
        raise ApiError(404, _("unknown job %(name)s", name=repr(name)))
    recent = await backend.runs(RunsQuery(job=name, limit=20, offset=0))
    return _render(request, "job.html", {"job": row, "runs": recent})


async def runs(request: Request) -> Response:
    p = parse(RunsParams, dict(request.query_params))
    backend: Backend = request.app.state.backend
    rows = await backend.runs(RunsQuery(**p.model_dump()))
    filters = {k: request.query_params.get(k, "") for k in ("job", "state", "since", "until")}
    filters["job"] = p.job or ""  # NFC, as the select's options are

    def page_at(offset: int) -> str:
        return "?" + urlencode({**{k: v for k, v in filters.items() if v}, "limit": p.limit, "offset": offset})

    return _render(request, "runs.html", {
        "runs": rows, "p": p, "filters": filters, "jobs": sorted(backend.catalog.specs),
        "newer": page_at(max(p.offset - p.limit, 0)) if p.offset else None,
        "older": page_at(p.offset + p.limit) if len(rows) == p.limit else None})


async def run(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    run_id = request.path_params["run_id"]
    row = await backend.run(run_id) if len(run_id) <= 128 else None
    if row is None:
        _ = translator(request.app.state.locale_of())
        raise ApiError(404, _("unknown run %(id)s", id=repr(run_id)))
    return _render(request, "run.html", {"run": row})


async def charts(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    job = normalise_name(request.query_params.get("job") or next(iter(sorted(backend.catalog.specs)), ""))
    if job and backend.spec(job) is None:
        _ = translator(request.app.state.locale_of())
        raise ApiError(404, _("unknown job %(name)s", name=repr(job)))
    return _render(request, "charts.html", {"job": job, "jobs": sorted(backend.catalog.specs)})


async def flights(request: Request) -> Response:
    p = parse(FlightsParams, dict(request.query_params))
    backend: Backend = request.app.state.backend
    closed, (open_now, open_error), refused = await asyncio.gather(
        backend.flights(FlightsQuery(**p.model_dump())), _open_flights(backend, p),
        backend.refused(RefusedQuery(watch=p.watch, since=p.since, limit=REFUSED_ON_PAGE, offset=0)))
    filters = {k: request.query_params.get(k, "") for k in ("watch", "job", "since")}
    filters.update(watch=p.watch or "", job=p.job or "")

    def page_at(offset: int) -> str:
        return "?" + urlencode({**{k: v for k, v in filters.items() if v}, "limit": p.limit, "offset": offset})

    return _render(request, "flights.html", {
        "flights": open_now + closed, "open_count": len(open_now), "open_error": open_error, "p": p,
        "filters": filters,
        "watches": sorted(backend.catalog.watches), "refused": refused, "refused_limit": REFUSED_ON_PAGE,
        "newer": page_at(max(p.offset - p.limit, 0)) if p.offset else None,
        "older": page_at(p.offset + p.limit) if len(closed) == p.limit else None})


async def _open_flights(backend: Backend, p: FlightsParams) -> tuple[list[dict[str, Any]], str | None]:
    """The open flights (first page only), or why they cannot be read: the closed ones still show."""
    if p.offset:
        return [], None
    try:
        return await backend.open_flights(p.watch, p.job), None
    except Unavailable as exc:
        return [], str(exc)


async def flight(request: Request) -> Response:
    p = parse(FlightParams, dict(request.query_params))
    backend: Backend = request.app.state.backend
    flight_id = request.path_params["flight_id"]
    found = await backend.flight(flight_id, p.limit, p.offset) if len(flight_id) <= 128 else None
    if found is None:
        _ = translator(request.app.state.locale_of())
        raise ApiError(404, _("unknown flight %(id)s", id=repr(flight_id)))
    total = found["total_files"]
    return _render(request, "flight.html", {
        **found, "p": p,
        "newer": f"?limit={p.limit}&offset={max(p.offset - p.limit, 0)}" if p.offset else None,
        "older": f"?limit={p.limit}&offset={p.offset + p.limit}" if p.offset + p.limit < total else None})


ROUTES = [
    Route("/login", login_page, methods=["GET"], include_in_schema=False),
    Route("/login", login, methods=["POST"], include_in_schema=False),
    Route("/logout", logout, methods=["POST"], include_in_schema=False),
    Route("/", overview, include_in_schema=False),
    Route("/jobs", jobs, include_in_schema=False),
    Route("/jobs/{name:path}", job, include_in_schema=False),  # a name may hold '/' (sent as %2F)
    Route("/runs", runs, include_in_schema=False),
    Route("/runs/{run_id}", run, include_in_schema=False),
    Route("/flights", flights, include_in_schema=False),
    Route("/flights/{flight_id}", flight, include_in_schema=False),
    Route("/charts", charts, include_in_schema=False),
]
