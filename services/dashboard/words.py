"""Schedules in words for people ("every day at 06:00", "매일 06:00"), falling back to the cron text
for shapes it does not phrase; and the words for states and triggers. Pure functions, unit-tested
in tests/test_dashboard_unit.py. Messages come from the farm's catalog (shared/i18n.py)."""

from __future__ import annotations

from shared.config import JobSpec
from shared.i18n import N_, Translator, translator
from shared.job_schedule import describe_when

ENGLISH = translator("en")
DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAY_NAMES = {d[:3].upper(): i for i, d in enumerate(DAYS[:7])}
_DAY_WORDS = [N_("Sunday"), N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"),
              N_("Saturday")]

# state and trigger words (ids on the wire, words on the page), and what the page's script says
STATE_WORDS = {"started": N_("started"), "succeeded": N_("succeeded"), "failed": N_("failed"),
               "retrying": N_("retrying"), "dead": N_("dead"), "skipped": N_("skipped"), "missed": N_("missed"),
               "queued": N_("queued")}
TRIGGER_WORDS = {"tick": N_("tick"), "manual": N_("manual"), "file": N_("file"), "batch": N_("batch")}
LEVEL_WORDS = {"info": N_("info"), "warning": N_("warning"), "error": N_("error"), "critical": N_("critical")}
# every t("...") in static/app.js (tests/test_i18n.py checks the two lists agree)
JS_MESSAGES = [
    N_("live"), N_("reconnecting"), N_("run of %(job)s queued: "), N_("%(action)s %(job)s: %(error)s"),
    N_("No finished runs yet."), N_("chart unavailable: %(error)s"), N_("runs per hour"), N_("seconds"),
    N_("duration (s)"), N_("exit %(code)s"), N_("%(n)s s"), N_("%(n)s min"), N_("State"), N_("Job"), N_("Trigger"),
    N_("When"), N_("Duration"), N_("Attempt"), N_("Exit / reason"), N_("run"), N_("pause"), N_("resume"),
    *STATE_WORDS.values(), *TRIGGER_WORDS.values(),
]


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


def describe(spec: JobSpec, _: Translator = ENGLISH) -> str:
    return describe_when(spec, lambda expr: cron_words(expr, _), _)
