"""A job's schedule, and what starts it in a few words: shared by the timer, the notifier's
dead-man switch, the dashboard and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo

from shared.config import JobSpec
from shared.durations import format_duration
from shared.schedule import Schedule


def schedule_of(spec: JobSpec) -> Schedule | None:
    job = spec.job
    if not job.enabled:
        return None
    if job.schedule is not None:
        return Schedule(cron=job.schedule, tz=ZoneInfo(spec.timezone))
    if job.interval is not None:
        return Schedule(interval=job.interval)
    if job.run_at is not None:
        return Schedule(run_at=job.run_at)
    return None


def describe_when(spec: JobSpec, cron: Callable[[str], str] = "cron {}".format) -> str:
    """What starts the job, in a few words; `cron` renders a cron expression (the dashboard
    passes one that says it in words)."""
    job = spec.job
    if job.schedule:
        return cron(job.schedule)
    if job.interval:
        return f"every {format_duration(job.interval)}"
    if job.run_at:
        return f"once at {job.run_at.isoformat()}"
    if job.on_file:
        return f"on each file in {job.on_file}"
    if job.on_batch:
        return f"on each flight batch in {job.on_batch.watch}"
    return "on demand"
