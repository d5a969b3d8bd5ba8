"""Query parameters of the API and pages, validated by pydantic: a bad or unknown parameter is a
422 that names it. Times are ISO 8601 (UTC if no offset) or a duration meaning "that long ago"."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.durations import parse_since
from shared.events import Name, RunState


class BadParams(ValueError):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['param']}: {p['problem']}" for p in problems))
        self.problems = problems


def _when(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        return None if value == "" else value
    return parse_since(value)


def _blank(value: Any) -> Any:
    return None if value == "" else value  # an empty form field means "any"


When = Annotated[datetime | None, BeforeValidator(_when)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunsParams(_Params):
    job: Annotated[Name | None, BeforeValidator(_blank)] = Field(None, max_length=64)
    state: Annotated[RunState | None, BeforeValidator(_blank)] = None
    since: When = None
    until: When = None
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class HourlyParams(_Params):
    days: float = Field(7, gt=0, le=90)


class DurationsParams(_Params):
    job: Name = Field(min_length=1, max_length=64)
    limit: int = Field(200, ge=1, le=5000)


class AlertsParams(_Params):
    limit: int = Field(20, ge=1, le=500)


class FlightsParams(_Params):
    watch: Annotated[Name | None, BeforeValidator(_blank)] = Field(None, max_length=64)
    job: Annotated[Name | None, BeforeValidator(_blank)] = Field(None, max_length=64)
    since: When = None  # closed at or after
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)


class FlightParams(_Params):
    """A page of one flight's files."""

    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class RefusedParams(_Params):
    watch: Annotated[Name | None, BeforeValidator(_blank)] = Field(None, max_length=64)
    since: When = None
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class NoParams(_Params):
    pass


M = TypeVar("M", bound=_Params)


def parse(model: type[M], params: dict[str, str]) -> M:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise BadParams([{"param": ".".join(str(p) for p in e["loc"]) or "query", "problem": e["msg"]}
                         for e in exc.errors()]) from None
