"""The JSON API under /api. Each endpoint's docstring is its OpenAPI description (Starlette's
SchemaGenerator reads the YAML after '---'), served at /api/openapi.json."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from services.dashboard.backend import Backend
from services.dashboard.errors import ApiError
from services.dashboard.params import (
    AlertsParams,
    DurationsParams,
    FlightParams,
    FlightsParams,
    HourlyParams,
    NoParams,
    RefusedParams,
    RunsParams,
    parse,
)
from shared.manual import CannotRunNow
from shared.names import normalise_name
from shared.queries import FlightsQuery, RefusedQuery, RunsQuery

SCHEMAS = SchemaGenerator({
    "openapi": "3.0.3",
    "info": {"title": "cropcron dashboard API", "version": "1"},
    "components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"},
        "session": {"type": "apiKey", "in": "cookie", "name": "cropcron_session"}}},
    "security": [{"bearer": []}, {"session": []}],
})


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def _who(request: Request) -> str:
    client = request.client.host if request.client else "?"
    principal = request.state.principal
    return f"dashboard ({principal.role}, {principal.via}, {client})"


def _job_name(request: Request) -> str:
    # URL-encoded in the path (/api/jobs/%EC%95%84...), decoded by Starlette; NFC as the config's names
    name = normalise_name(request.path_params["name"])
    if _backend(request).spec(name) is None:
        raise ApiError(404, f"unknown job {name!r}")
    return name


async def overview(request: Request) -> Response:
    """
    summary: Service health, runs today by state, 7-day success rate, running now, next runs, alerts
    responses:
      200: {description: the overview}
    """
    parse(NoParams, dict(request.query_params))
    return JSONResponse(await _backend(request).overview())


async def health(request: Request) -> Response:
    """
    summary: NATS, Postgres and every service's heartbeat
    responses:
      200: {description: health}
    """
    parse(NoParams, dict(request.query_params))
    return JSONResponse(await _backend(request).health())


async def jobs(request: Request) -> Response:
    """
    summary: Every job with schedule in words, time zone, next run, last state, success rate, mean and p95 duration
    responses:
      200: {description: "{jobs: [...]}"}
    """
    parse(NoParams, dict(request.query_params))
    return JSONResponse({"jobs": await _backend(request).jobs()})


async def job(request: Request) -> Response:
    """
    summary: One job
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: the job}
      404: {description: unknown job}
    """
    row = await _backend(request).job(_job_name(request))
    if row is None:
        raise ApiError(404, f"unknown job {normalise_name(request.path_params['name'])!r}")
    return JSONResponse(row)


async def run_job(request: Request) -> Response:
    """
    summary: Run a job now (a manual trigger, like `cropcron run`)
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses:
      202: {description: "queued: {run_id, job, state}"}
      403: {description: cross-site request or missing CSRF token}
      404: {description: unknown job}
      409: {description: the job runs on arrived files and cannot run without one}
    """
    name = _job_name(request)
    try:
        run_id = await _backend(request).run_now(name, _who(request))
    except CannotRunNow as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse({"run_id": run_id, "job": name, "state": "queued", "url": f"/runs/{run_id}"},
                        status_code=202)


async def _pause(request: Request, paused: bool) -> Response:
    name = _job_name(request)
    await _backend(request).set_paused(name, paused, _who(request))
    return JSONResponse({"job": name, "paused": paused})


async def pause_job(request: Request) -> Response:
    """
    summary: Pause a job's schedule (manual runs still run)
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: "{job, paused: true}"}
      404: {description: unknown job}
    """
    return await _pause(request, True)


async def resume_job(request: Request) -> Response:
    """
    summary: Resume a paused job's schedule
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: "{job, paused: false}"}
      404: {description: unknown job}
    """
    return await _pause(request, False)


def _paging(limit: int, offset: int, more: bool) -> dict[str, int | None]:
    """A page's place: next_offset is null on the last page."""
    return {"limit": limit, "offset": offset, "next_offset": offset + limit if more else None}


async def runs(request: Request) -> Response:
    """
    summary: Runs, newest first, filtered and paged
    parameters:
      - {name: job, in: query, schema: {type: string}}
      - {name: state, in: query, schema: {type: string, enum: [started, succeeded, failed, retrying, dead, skipped, missed]}}
      - {name: since, in: query, description: "ISO time, or a duration ago (2h)", schema: {type: string}}
      - {name: until, in: query, description: "ISO time, or a duration ago", schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "{runs: [...], limit, offset, next_offset}"}
      422: {description: a bad parameter, named}
    """
    p = parse(RunsParams, dict(request.query_params))
    rows = await _backend(request).runs(RunsQuery(**p.model_dump()))
    return JSONResponse({"runs": rows, **_paging(p.limit, p.offset, len(rows) == p.limit)})


async def run(request: Request) -> Response:
    """
    summary: One run with its attempts, trigger, timings, exit code, error and output tail
    parameters: [{name: run_id, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: the run}
      404: {description: unknown run}
    """
    run_id = request.path_params["run_id"]
    row = await _backend(request).run(run_id) if len(run_id) <= 128 else None
    if row is None:
        raise ApiError(404, f"unknown run {run_id!r}")
    return JSONResponse(row)


async def hourly(request: Request) -> Response:
    """
    summary: Runs per hour by state
    parameters: [{name: days, in: query, schema: {type: number, default: 7, maximum: 90}}]
    responses:
      200: {description: "{hours: [...], series: {state: [...]}}"}
    """
    p = parse(HourlyParams, dict(request.query_params))
    return JSONResponse(await _backend(request).hourly(p.days))


async def durations(request: Request) -> Response:
    """
    summary: Duration of each finished run of a job, oldest first
    parameters:
      - {name: job, in: query, required: true, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, default: 200}}
    responses:
      200: {description: "{job, runs: [{run_id, state, at, duration_s}]}"}
      404: {description: unknown job}
    """
    p = parse(DurationsParams, dict(request.query_params))
    if _backend(request).spec(p.job) is None:
        raise ApiError(404, f"unknown job {p.job!r}")
    return JSONResponse({"job": p.job, "runs": await _backend(request).durations(p.job, p.limit)})


async def files_hourly(request: Request) -> Response:
    """
    summary: Files that arrived per hour, one series per watch
    parameters: [{name: days, in: query, schema: {type: number, default: 7, maximum: 90}}]
    responses:
      200: {description: "{since, hours: [...], series: {watch: [...]}}"}
      422: {description: a bad parameter, named}
    """
    p = parse(HourlyParams, dict(request.query_params))
    return JSONResponse(await _backend(request).files_hourly(p.days))


async def flights(request: Request) -> Response:
    """
    summary: Flights (batches of a drone's upload), newest first; "open" lists those still receiving files
    parameters:
      - {name: watch, in: query, schema: {type: string}}
      - {name: job, in: query, schema: {type: string}}
      - {name: since, in: query, description: "closed at or after: ISO time, or a duration ago (2h)", schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "{open: [...], flights: [{id, job, watch, folder, files, bytes, state, run_state, first_arrival, last_arrival, ...}], limit, offset, next_offset}"}
      422: {description: a bad parameter, named}
    """
    p = parse(FlightsParams, dict(request.query_params))
    backend = _backend(request)
    closed, open_now = await asyncio.gather(backend.flights(FlightsQuery(**p.model_dump())),
                                            backend.open_flights(p.watch, p.job))
    return JSONResponse({"open": open_now, "flights": closed, **_paging(p.limit, p.offset, len(closed) == p.limit)})


async def flight(request: Request) -> Response:
    """
    summary: One flight (closed, or still open) with a page of its files in arrival order
    parameters:
      - {name: flight_id, in: path, required: true, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "{flight, files: [{position, id, rel_path, size, detected_at}], total_files, limit, offset, next_offset}"}
      404: {description: unknown flight}
      422: {description: a bad parameter, named}
    """
    p = parse(FlightParams, dict(request.query_params))
    flight_id = request.path_params["flight_id"]
    found = await _backend(request).flight(flight_id, p.limit, p.offset) if len(flight_id) <= 128 else None
    if found is None:
        raise ApiError(404, f"unknown flight {flight_id!r}")
    more = p.offset + len(found["files"]) < found["total_files"]
    return JSONResponse({**found, **_paging(p.limit, p.offset, more)})


async def refused(request: Request) -> Response:
    """
    summary: Files the watcher refused (zero bytes, a symlink, outside the root, ...), newest first, with the reason
    parameters:
      - {name: watch, in: query, schema: {type: string}}
      - {name: since, in: query, description: "ISO time, or a duration ago (2h)", schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "{refused: [{watch, path, reason, at}], limit, offset, next_offset}"}
      422: {description: a bad parameter, named}
    """
    p = parse(RefusedParams, dict(request.query_params))
    rows = await _backend(request).refused(RefusedQuery(**p.model_dump()))
    return JSONResponse({"refused": rows, **_paging(p.limit, p.offset, len(rows) == p.limit)})


async def alerts(request: Request) -> Response:
    """
    summary: Recent alerts ("available" is false while the notifier's history is not answering)
    parameters: [{name: limit, in: query, schema: {type: integer, default: 20}}]
    responses:
      200: {description: "{available, alerts: [...], error}"}
    """
    p = parse(AlertsParams, dict(request.query_params))
    return JSONResponse(await _backend(request).alerts(p.limit))


async def events(request: Request) -> Response:
    """
    summary: Server-sent events; "run" carries each run event as it happens, "hello" and "resync" ask the page to reload its lists
    responses:
      200: {description: text/event-stream}
    """
    parse(NoParams, dict(request.query_params))
    return StreamingResponse(request.app.state.live.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def openapi(request: Request) -> Response:
    schema: dict[str, Any] = SCHEMAS.get_schema(routes=request.app.routes)
    return JSONResponse(schema)


ROUTES = [
    Route("/api/overview", overview),
    Route("/api/health", health),
    Route("/api/jobs", jobs),
    Route("/api/jobs/{name:path}", job),  # a name may hold '/' (sent as %2F)
    Route("/api/jobs/{name:path}/run", run_job, methods=["POST"]),
    Route("/api/jobs/{name:path}/pause", pause_job, methods=["POST"]),
    Route("/api/jobs/{name:path}/resume", resume_job, methods=["POST"]),
    Route("/api/runs", runs),
    Route("/api/runs/{run_id}", run),
    Route("/api/charts/hourly", hourly),
    Route("/api/charts/durations", durations),
    Route("/api/charts/files", files_hourly),
    Route("/api/flights", flights),
    Route("/api/flights/{flight_id}", flight),
    Route("/api/refused", refused),
    Route("/api/alerts", alerts),
    Route("/api/events", events),
    Route("/api/openapi.json", openapi, include_in_schema=False),
]
