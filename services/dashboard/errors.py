"""Errors: clear JSON for the API ({"error": ..., "status": ...}), readable pages for people. No
traceback or secret ever reaches a response; unexpected errors are logged with their trace."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.dashboard.backend import Unavailable
from services.dashboard.params import BadParams

log = logging.getLogger("cropcron.dashboard")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def error_response(request: Request, status: int, message: str, extra: dict[str, object] | None = None) -> Response:
    if wants_json(request):
        return JSONResponse({"error": message, "status": status, **(extra or {})}, status_code=status)
    page: Response = request.app.state.templates.TemplateResponse(
        request, "error.html", {"status": status, "message": message, "extra": extra}, status_code=status)
    return page


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.message)


async def on_bad_params(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadParams)
    return error_response(request, 422, f"bad parameters: {exc}", {"problems": exc.problems})


async def on_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(request, 503, str(exc))


async def on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    return error_response(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))


async def on_crash(request: Request, exc: Exception) -> Response:
    log.error("dashboard: %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal error (logged by the dashboard)")


HANDLERS = {ApiError: on_api_error, BadParams: on_bad_params, Unavailable: on_unavailable, HTTPException: on_http,
            Exception: on_crash}
