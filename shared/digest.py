"""What a digest says (the `digest` chore, shared/chores.py): the runner gathers it from history,
the catalog and the disks, and hands it to the notifier inside a Notification
(shared/events.py: `digest`), which renders it for each channel in the farm's language
(services/notifier/digest.py): an HTML email with a chart, a Slack message, a log entry."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DigestFailure(_Part):
    run_id: str
    job: str
    state: str
    attempt: int
    at: datetime
    error: str | None = None


class DigestDisk(_Part):
    path: str
    free: int | None = None  # bytes; None with `error`
    total: int | None = None
    error: str | None = None


class DigestOverdue(_Part):
    job: str
    at: datetime  # when the latest overdue alert was raised
    resolved: bool  # a success has cleared it since


class DigestReport(_Part):
    job: str  # the digest job that made it
    run_id: str
    title: str | None = None
    since: datetime
    until: datetime
    by_job: dict[str, dict[str, int]]  # job -> state -> runs
    failures: list[DigestFailure]  # the newest dead runs (at most the chore's max_failures)
    failures_total: int = Field(ge=0)
    files: dict[str, int]  # watch -> files received (runs of its on_file jobs)
    flights: dict[str, int]  # watch -> flight batches received (runs of its on_batch jobs)
    disks: list[DigestDisk]
    overdue: list[DigestOverdue]
    # the chart: runs per bucket (hour or day in the farm's zone), by state
    bucket: Literal["hour", "day"]
    buckets: list[datetime]
    series: dict[str, list[int]]
