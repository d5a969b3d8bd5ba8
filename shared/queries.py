"""Request/reply contracts for the history service (subjects in shared.wire). Every reply is
{"ok": true, "data": ...} or {"ok": false, "error": "..."}."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import Name, RunState


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunsQuery(_Query):
    job: Name | None = None  # as people type it: NFC-normalised like the names history stores
    state: RunState | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(50, ge=1, le=10000)
    offset: int = Field(0, ge=0)
    run_id: str | None = None
    with_attempts: bool = False


class StatsQuery(_Query):
    days: float = Field(7, gt=0, le=3650)


class LastQuery(_Query):
    jobs: list[Name] | None = None


class AlertsQuery(_Query):
    """Alerts raised, newest first, each with its delivery attempts (answered by history, issue 4)."""

    level: Literal["info", "warning", "error", "critical"] | None = None  # this level and above
    job: Name | None = None
    since: datetime | None = None
    limit: int = Field(50, ge=1, le=10000)
    offset: int = Field(0, ge=0)


class HourlyQuery(_Query):
    """Runs per hour by state over the last `days` (dashboard chart, issue 5)."""

    days: float = Field(7, gt=0, le=90)


class DurationsQuery(_Query):
    """Duration of each finished run of one job, oldest first (dashboard chart, issue 5)."""

    job: Name = Field(min_length=1, max_length=64)
    since: datetime | None = None
    limit: int = Field(500, ge=1, le=5000)


class CountsQuery(_Query):
    """Runs by their current state whose time (scheduled, else started) is in [since, until)."""

    since: datetime
    until: datetime | None = None


class DigestQuery(_Query):
    """Everything a digest reports from history over [since, until) (the `digest` chore)."""

    since: datetime
    until: datetime
    bucket: Literal["hour", "day"] = "hour"
    timezone: str = "UTC"  # days are the farm's days
    max_failures: int = Field(20, ge=0, le=200)
    exclude_run: str | None = None  # the digest's own run, still going on

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class FlightsQuery(_Query):
    """Closed flights, newest first, each with its batch run's state (issue 14). With `id`: that
    flight alone, with a page of its files (`limit`/`offset` page the files then)."""

    watch: Name | None = None
    job: Name | None = None
    id: str | None = Field(None, min_length=1, max_length=128)
    since: datetime | None = None  # closed at or after
    limit: int = Field(50, ge=1, le=10000)
    offset: int = Field(0, ge=0)


class RefusedQuery(_Query):
    """Files the watcher refused (zero-byte, symlink, outside the root, ...), newest first."""

    watch: Name | None = None
    since: datetime | None = None
    limit: int = Field(50, ge=1, le=10000)
    offset: int = Field(0, ge=0)


class FilesHourlyQuery(_Query):
    """Files that arrived per hour, per watch, over the last `days` (the charts page)."""

    days: float = Field(7, gt=0, le=90)


class UploadsQuery(_Query):
    """What arrived in [since, until) for each watch: files, flights closed (each with its file
    count and whether it was partial) and files no closed flight holds yet (`expect:` alarms)."""

    watches: list[Name] = Field(min_length=1, max_length=1000)
    since: datetime
    until: datetime


class CleanupRequest(_Query):
    older_than_days: float = Field(gt=0)


def ok(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}


def fail(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}
