"""Rules: which run events become alerts, and which channels an alert goes to."""

from __future__ import annotations

from fnmatch import fnmatchcase

from shared.events import Alert, AlertLevel, RunEvent, RunState
from shared.notify_config import LEVEL_RANK, NotificationsConfig

SOURCE = "notifier"
DETAILS = ("state", "attempt", "exit_code", "timed_out", "error", "reason", "output_tail", "duration_s",
           "scheduled_at", "trigger_kind", "runner")


def matches(config: NotificationsConfig, kind: str, level: str, job: str | None, job_type: str | None) -> list[str]:
    """Channels of every rule matching (kind, level, job, type); in rule order, no duplicates."""
    out: dict[str, None] = {}
    for rule in config.rules:
        if kind not in rule.when or LEVEL_RANK[level] < LEVEL_RANK[rule.min_level]:
            continue
        if job is not None and not any(fnmatchcase(job, pattern) for pattern in rule.jobs):
            continue
        if job is None and rule.jobs != ["*"]:
            continue  # a rule about particular jobs says nothing about job-less alerts
        if rule.types and job_type not in rule.types:
            continue
        out.update(dict.fromkeys(rule.channels))
    return list(out)


# an alert its raiser already delivered itself (`cropcron up` when the bus could not take it in
# time: a full disk) names those channels here, so the notifier does not send it to them again
DELIVERED_TO = "delivered_to"


def route(config: NotificationsConfig, alert: Alert) -> list[str]:
    done = alert.details.get(DELIVERED_TO)
    skip = {c for c in done if isinstance(c, str)} if isinstance(done, list) else set()
    return [c for c in matches(config, alert.kind, alert.level, alert.job, alert.job_type) if c not in skip]


def _details(ev: RunEvent) -> dict[str, object]:
    data = ev.model_dump(mode="json", include=set(DETAILS), exclude_none=True)
    if not data.get("timed_out"):
        data.pop("timed_out", None)
    return data


def alert_from_run(ev: RunEvent, config: NotificationsConfig) -> Alert | None:
    """The alert a run event raises, if any. Dead, timeout and missed always raise one (they are
    kept in history even when no rule routes them); a failed attempt or a success only when a
    rule asks for it, so a busy system does not fill the alerts stream with its successes."""
    kind: str
    level: AlertLevel
    if ev.state is RunState.DEAD:
        kind, level = "dead", "error"
        summary = f"{ev.job}: dead after {ev.attempt} attempt(s)" + (f": {ev.error}" if ev.error else "")
    elif ev.state is RunState.FAILED:
        kind, level = ("timeout", "warning") if ev.timed_out else ("failed", "warning")
        summary = f"{ev.job}: attempt {ev.attempt} " + ("timed out" if ev.timed_out else "failed") + (
            f": {ev.error}" if ev.error and not ev.timed_out else "")
    elif ev.state is RunState.MISSED:
        kind, level = "missed", "warning"
        summary = f"{ev.job}: scheduled run missed" + (f" ({ev.reason})" if ev.reason else "")
    elif ev.state is RunState.SUCCEEDED:
        kind, level = "succeeded", "info"
        summary = f"{ev.job}: succeeded" + (f" in {ev.duration_s:.1f}s" if ev.duration_s is not None else "")
    else:
        return None
    if kind in ("failed", "succeeded") and not matches(config, kind, level, ev.job, ev.job_type):
        return None
    return Alert(id=f"{ev.run_id}.{ev.attempt}.{kind}", level=level, kind=kind, summary=summary[:300],
                 job=ev.job, job_type=ev.job_type, run_id=ev.run_id, source=SOURCE, at=ev.at,
                 details=_details(ev))  # type: ignore[arg-type]


def resolved_alert(ev: RunEvent, kind: str, level: AlertLevel) -> Alert:
    """A success clears what was firing for the job: one resolved alert per kind it had."""
    return Alert(id=f"{ev.run_id}.resolved.{kind}", level=level, kind=kind, resolved=True,
                 summary=f"{ev.job}: succeeded again ({kind} resolved)", job=ev.job, job_type=ev.job_type,
                 run_id=ev.run_id, source=SOURCE, at=ev.at, details=_details(ev))  # type: ignore[arg-type]


# Kinds a later success of the job clears (`succeeded` itself is informational).
CLEARED_BY_SUCCESS = frozenset({"dead", "timeout", "failed", "missed", "overdue"})
