"""Words on the dashboard: schedules ("every day at 06:00", "매일 06:00"; shared/job_schedule.py
phrases them for the CLI too), states, triggers and what the page's script says. Messages come
from the farm's catalog (shared/i18n.py); unit-tested in tests/test_dashboard_unit.py."""

from __future__ import annotations

from shared.config import JobSpec
from shared.flights import REFUSAL_REASONS
from shared.i18n import N_, Translator, translator
from shared.job_schedule import cron_words, describe_when

__all__ = ["CLOSE_WORDS", "FLIGHT_WORDS", "JS_MESSAGES", "LEVEL_WORDS", "REFUSAL_WORDS", "STATE_WORDS", "TRIGGER_WORDS", "cron_words",
           "describe"]

ENGLISH = translator("en")

# state and trigger words (ids on the wire, words on the page), and what the page's script says
STATE_WORDS = {"started": N_("started"), "succeeded": N_("succeeded"), "failed": N_("failed"),
               "retrying": N_("retrying"), "dead": N_("dead"), "skipped": N_("skipped"), "missed": N_("missed"),
               "queued": N_("queued")}
TRIGGER_WORDS = {"tick": N_("tick"), "manual": N_("manual"), "file": N_("file"), "batch": N_("batch")}
# a flight: still receiving files (KV), closed, or closed early (max_wait, full: "partial")
FLIGHT_WORDS = {"open": N_("open"), "closed": N_("closed"), "partial": N_("partial")}
CLOSE_WORDS = {"quiet": N_("quiet time passed"), "manifest": N_("manifest arrived"), "count": N_("all files arrived"),
               "max_wait": N_("waited too long"), "full": N_("too many files for one run")}
REFUSAL_WORDS = {r: r for r in REFUSAL_REASONS}
LEVEL_WORDS = {"info": N_("info"), "warning": N_("warning"), "error": N_("error"), "critical": N_("critical")}
# every t("...") in static/app.js (tests/test_i18n.py checks the two lists agree)
JS_MESSAGES = [
    N_("live"), N_("reconnecting"), N_("Time"), N_("run of %(job)s queued: "), N_("%(action)s %(job)s: %(error)s"),
    N_("No finished runs yet."), N_("chart unavailable: %(error)s"), N_("runs per hour"), N_("seconds"),
    N_("duration (s)"), N_("exit %(code)s"), N_("%(n)s s"), N_("%(n)s min"), N_("State"), N_("Job"), N_("Trigger"),
    N_("When"), N_("Duration"), N_("Attempt"), N_("Exit / reason"), N_("run"), N_("pause"), N_("resume"),
    N_("files per hour"), N_("No files arrived in these days."),
    *STATE_WORDS.values(), *TRIGGER_WORDS.values(),
]


def describe(spec: JobSpec, _: Translator = ENGLISH) -> str:
    return describe_when(spec, lambda expr: cron_words(expr, _), _)
