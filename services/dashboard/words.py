"""Schedules in words for people ("every day at 06:00"), falling back to the cron text for shapes
it does not phrase. Pure functions, unit-tested in tests/test_dashboard_unit.py."""

from __future__ import annotations

from shared.config import JobSpec
from shared.job_schedule import describe_when

DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAY_NAMES = {d[:3].upper(): i for i, d in enumerate(DAYS[:7])}


def _day(text: str) -> int | None:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    return DAY_NAMES.get(text.upper())


def _days(field: str) -> str | None:
    if field == "*":
        return "every day"
    if field.upper() in ("1-5", "MON-FRI"):
        return "weekdays"
    if field.upper() in ("0,6", "6,0", "SAT,SUN", "SUN,SAT"):
        return "weekends"
    names = [_day(p) for p in field.split(",")]
    if names and all(n is not None for n in names):
        return "every " + ", ".join(DAYS[n] for n in names if n is not None)
    return None


def _every(field: str, unit: str) -> str | None:
    if field == "*":
        return f"every {unit}"
    if field.startswith("*/") and field[2:].isdigit():
        return f"every {int(field[2:])} {unit}s"
    return None


def cron_words(expr: str) -> str:
    fields = expr.split()
    if len(fields) == 6:  # seconds first
        sec, rest = fields[0], fields[1:]
        if rest == ["*"] * 5:
            return _every(sec, "second") or f"cron {expr}"
        return f"cron {expr}"
    if len(fields) != 5:
        return f"cron {expr}"
    minute, hour, dom, month, dow = fields
    at = f"{int(hour):02d}:{int(minute):02d}" if minute.isdigit() and hour.isdigit() else None
    if at and dom.isdigit() and month == "*" and dow == "*":
        return f"monthly on day {int(dom)} at {at}"
    if dom != "*" or month != "*":
        return f"cron {expr}"
    days = _days(dow)
    if at and days:
        return f"{days} at {at}"
    if hour == "*" and dow == "*":
        if minute.isdigit():
            return f"every hour at minute {int(minute)}"
        every = _every(minute, "minute")
        if every:
            return every
    return f"cron {expr}"


def describe(spec: JobSpec) -> str:
    return describe_when(spec, cron_words)
