"""A job's schedule, and what starts it in a few words: shared by the timer, the notifier's
dead-man switch, the dashboard and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo

from shared.config import JobSpec
from shared.durations import format_duration
from shared.i18n import Translator, translator
from shared.schedule import Schedule

ENGLISH = translator("en")


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


def describe_when(spec: JobSpec, cron: Callable[[str], str] = "cron {}".format,
                  _: Translator = ENGLISH) -> str:
    """What starts the job, in a few words, in the translator's language; `cron` renders a cron
    expression (the dashboard passes one that says it in words)."""
    job = spec.job
    if job.schedule:
        return cron(job.schedule)
    if job.interval:
        return _("every %(interval)s", interval=format_duration(job.interval))
    if job.run_at:
        return _("once at %(at)s", at=job.run_at.isoformat())
    if job.on_file:
        return _("on each file in %(watch)s", watch=job.on_file)
    if job.on_batch:
        return _("on each flight batch in %(watch)s", watch=job.on_batch.watch)
    return _("on demand")
