"""A job's schedule, and what starts it in a few words: shared by the timer, the notifier's
dead-man switch, the dashboard and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo

from shared.config import JobSpec
from shared.durations import format_duration
from shared.i18n import N_, Translator, translator
from shared.schedule import Schedule
from shared.sun_config import format_offset
from shared.sun_schedule import SunSchedule

ENGLISH = translator("en")
DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAY_NAMES = {d[:3].upper(): i for i, d in enumerate(DAYS[:7])}
SUN_WORDS = {"sunrise": N_("sunrise"), "sunset": N_("sunset"), "noon": N_("solar noon"), "dawn": N_("dawn"),
             "dusk": N_("dusk")}
_DAY_WORDS = [N_("Sunday"), N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"),
              N_("Saturday")]


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
    if job.sun is not None and spec.location is not None:
        return SunSchedule(job.sun, spec.location, ZoneInfo(spec.timezone))
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
    if job.sun and job.sun.at:
        event = _(SUN_WORDS[job.sun.at])
        if job.sun.offset:
            return _("at %(event)s %(offset)s", event=event, offset=format_offset(job.sun.offset))
        return _("at %(event)s", event=event)
    if job.sun and job.sun.every and job.sun.elevation_above is not None:
        every, degrees = format_duration(job.sun.every), format(job.sun.elevation_above, "g")
        return _("every %(interval)s while the sun is above %(degrees)s°", interval=every, degrees=degrees)
    if job.on_file:
        return _("on each file in %(watch)s", watch=job.on_file)
    if job.on_batch:
        return _("on each flight batch in %(watch)s", watch=job.on_batch.watch)
    return _("on demand")


# -- cron in words: for people (the dashboard, the CLI's table), never a wrong sentence ---------
def _day(text: str) -> int | None:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    return DAY_NAMES.get(text.upper())


def _days(field: str, _: Translator) -> str | None:
    if field == "*":
        return _("every day")
    if field.upper() in ("1-5", "MON-FRI"):
        return _("weekdays")
    if field.upper() in ("0,6", "6,0", "SAT,SUN", "SUN,SAT"):
        return _("weekends")
    names = [_day(p) for p in field.split(",")]
    if names and all(n is not None for n in names):
        return _("every %(days)s", days=", ".join(_(_DAY_WORDS[n % 7]) for n in names if n is not None))
    return None


def _every(field: str, unit: str, _: Translator) -> str | None:
    if field == "*":
        return _("every second") if unit == "second" else _("every minute")
    if field.startswith("*/") and field[2:].isdigit():
        n = int(field[2:])
        return _("every %(n)d seconds", n=n) if unit == "second" else _("every %(n)d minutes", n=n)
    return None


def cron_words(expr: str, _: Translator = ENGLISH) -> str:
    cron = _("cron %(expr)s", expr=expr)
    fields = expr.split()
    if len(fields) == 6:  # seconds first
        sec, rest = fields[0], fields[1:]
        if rest == ["*"] * 5:
            return _every(sec, "second", _) or cron
        return cron
    if len(fields) != 5:
        return cron
    minute, hour, dom, month, dow = fields
    at = f"{int(hour):02d}:{int(minute):02d}" if minute.isdigit() and hour.isdigit() else None
    if at and dom.isdigit() and month == "*" and dow == "*":
        return _("monthly on day %(day)d at %(at)s", day=int(dom), at=at)
    if dom != "*" or month != "*":
        return cron
    days = _days(dow, _)
    if at and days:
        return _("%(days)s at %(at)s", days=days, at=at)
    if hour == "*" and dow == "*":
        if minute.isdigit():
            return _("every hour at minute %(minute)d", minute=int(minute))
        every = _every(minute, "minute", _)
        if every:
            return every
    return cron
