"""Data-completeness alarms (issue 14): a watch or an `on_batch` that declares `expect:` is judged
from history on every dead-man check, so this works with the watcher (or the whole upload path)
down, like `overdue`:

- `no_uploads`: once the day's `by` has passed (the farm's time zone, system.timezone) and fewer
  than `flights_per_day` flights have come that day. Raised once per day; resolved as soon as
  enough flights have come since the start of the day it was raised for (the first file, for
  one flight a day).
- `incomplete_flight`: a closed flight below `min_files`, or closed partial (max_wait or the size
  limit cut it). Resolved by the job's next complete flight.

A flight is a batch of an `on_batch` job; files that no closed flight holds yet count as one
(open) flight, so a day's first file already counts. Flights are judged once each (their ids are
remembered for JUDGE_WINDOW), from the first check on: a new notifier does not alarm about the past.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.notifier.context import Notifier
from services.notifier.intake import raise_alerts
from services.notifier.rules import SOURCE
from services.notifier.state import ExpectState
from shared import wire
from shared.config import JobSpec
from shared.events import Alert, utcnow
from shared.i18n import N_
from shared.queries import UploadsQuery
from shared.reply import ask
from shared.watch_config import Expectation, WatchConfig

log = logging.getLogger("cropcron.notifier")

JUDGE_WINDOW = timedelta(days=3)  # flights closed longer ago than this are not looked at again
FIRST_LOOK_BACK = timedelta(minutes=10)  # a first check judges flights closed this long before it
Uploads = dict[str, dict[str, Any]]  # watch -> history's answer for it (UploadsQuery)


@dataclass(frozen=True)
class Expected:
    key: str  # "watch:<name>" or "job:<name>": what the alarm is about
    watch: str
    job: str | None  # the on_batch job whose flights count; None: every flight of the watch
    rule: Expectation


def expectations(watches: dict[str, WatchConfig], specs: dict[str, JobSpec]) -> list[Expected]:
    out = [Expected(f"watch:{w.name}", w.name, None, w.expect) for w in watches.values() if w.expect is not None]
    for spec in specs.values():
        batch = spec.job.on_batch
        if batch is not None and batch.expect is not None and spec.job.enabled:
            out.append(Expected(f"job:{spec.name}", batch.watch, spec.name, batch.expect))
    return out


def flights_seen(day: dict[str, Any], job: str | None) -> int:
    """Flights closed in the period (the job's, or any on the watch), plus one for files no closed
    flight holds yet: an open flight, or a watch whose files no job batches."""
    closed = sum(1 for f in day["flights"] if job is None or f["job"] == job)
    return closed + (1 if day["unbatched"] else 0)


def day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def is_incomplete(flight: dict[str, Any], rule: Expectation) -> bool:
    return bool(flight["partial"]) or (rule.min_files is not None and int(flight["files"]) < rule.min_files)


async def _uploads(svc: Notifier, watches: list[str], since: datetime, until: datetime) -> Uploads:
    query = UploadsQuery(watches=watches, since=since, until=until)
    answer = json.loads(await ask(svc.bus.nc, wire.HISTORY_REPORT_UPLOADS, query.model_dump_json().encode(), 10))
    if not answer.get("ok"):
        raise RuntimeError(f"history: {answer.get('error')}")
    data: Uploads = answer["data"]
    return data


async def check_expectations(svc: Notifier) -> bool:
    """Ask history first, then judge: a failed question changes no state (the next check asks again)."""
    wanted = expectations(svc.catalog.watches, svc.catalog.specs)
    st = svc.state.expect
    if not wanted:
        return False
    now = utcnow()
    zone = ZoneInfo(svc.catalog.system.timezone)
    local = now.astimezone(zone)
    until = now + timedelta(seconds=1)
    watches = sorted({e.watch for e in wanted})
    since = st.since or now - FIRST_LOOK_BACK
    # each day an alarm is still firing for, and today: what came since that day began
    days = {local.date().isoformat(), *st.no_uploads.values()}
    got_days = {day: await _uploads(svc, watches, day_start(date.fromisoformat(day), zone), until)
                for day in sorted(days)}
    window = max(since, now - JUDGE_WINDOW)
    got_window = await _uploads(svc, watches, window, until)
    if st.since is None:
        st.since = since
        svc.state.expect_dirty = True
    alerts = [a for e in wanted if (a := judge_day(e, st, got_days, local)) is not None]
    alerts += judge_flights(wanted, st, got_window, window, now)
    if alerts:
        svc.state.expect_dirty = True
        await raise_alerts(svc, alerts)
        log.warning("notifier: data alarms: %s", ", ".join(f"{a.kind} {a.group_key()}" for a in alerts))
    return bool(alerts)


def judge_day(e: Expected, st: ExpectState, got_days: dict[str, Uploads], local: datetime) -> Alert | None:
    """`no_uploads` for one expectation: raised once a day past its deadline, resolved by data.
    `got_days`: what came since the start of today and of each day an alarm is firing for."""
    today = local.date().isoformat()
    fired = st.no_uploads.get(e.key)
    if fired is not None:
        seen = flights_seen(got_days[fired][e.watch], e.job)
        if seen >= e.rule.flights_per_day:
            del st.no_uploads[e.key]
            return _no_uploads(e, date.fromisoformat(fired), seen, local, resolved=True)
        if fired == today:
            return None  # raised for today already: once a day
    seen = flights_seen(got_days[today][e.watch], e.job)
    if local.time() < e.rule.deadline() or seen >= e.rule.flights_per_day:
        return None
    st.no_uploads[e.key] = today
    return _no_uploads(e, local.date(), seen, local, resolved=False)


def _no_uploads(e: Expected, day: date, seen: int, local: datetime, resolved: bool) -> Alert:
    what = e.job or e.watch
    n = e.rule.flights_per_day
    summary = (f"{what}: uploads arrived ({seen} of {n} flight(s) since {day.isoformat()})" if resolved
               else f"{what}: no uploads by {e.rule.by} ({seen} of {n} flight(s) expected from {e.watch})")
    return Alert(
        id=f"no_uploads.{e.key}.{day.isoformat()}" + (f".resolved.{local.isoformat()}" if resolved else ""),
        level="warning", kind="no_uploads", job=e.job, source=SOURCE, at=local.astimezone(UTC),
        fingerprint=f"no_uploads:{e.key}", resolved=resolved, summary=summary,
        text="" if resolved else N_("Did the drone fly? Did its upload reach the edge server? Is the watcher "
                                    "running and its folder mounted?"),
        details={"watch": e.watch, "by": e.rule.by, "day": day.isoformat(), "seen": seen, "expected": n})


def judge_flights(wanted: list[Expected], st: ExpectState, got: Uploads, window: datetime,
                   now: datetime) -> list[Alert]:
    by_job = {e.job: e for e in wanted if e.job is not None}
    by_watch = {e.watch: e for e in wanted if e.job is None}
    """`incomplete_flight` for each flight not judged yet; a complete one resolves its job's alarm."""
    alerts: list[Alert] = []
    flights = sorted((f for day in got.values() for f in day["flights"]), key=lambda f: str(f["closed_at"]))
    for f in flights:
        if f["id"] in st.judged:
            continue
        st.judged[f["id"]] = datetime.fromisoformat(f["closed_at"])
        e = by_job.get(f["job"]) or by_watch.get(f["watch"])
        if e is None:
            continue
        if is_incomplete(f, e.rule):
            st.incomplete[f["job"]] = f["id"]
            alerts.append(_incomplete(f, e.rule, now, resolved=False))
        elif st.incomplete.pop(f["job"], None) is not None:
            alerts.append(_incomplete(f, e.rule, now, resolved=True))
    st.judged = {k: v for k, v in st.judged.items() if v >= window}
    return alerts


def _incomplete(f: dict[str, Any], rule: Expectation, now: datetime, resolved: bool) -> Alert:
    folder = f.get("folder") or ""
    where = f"{f['watch']}/{folder}" if folder else str(f["watch"])
    if resolved:
        summary = f"{f['job']}: a complete flight arrived ({f['files']} files in {where})"
    elif f["partial"]:
        summary = f"{f['job']}: flight {where} closed partial ({f['reason']}) with {f['files']} files"
    else:
        summary = f"{f['job']}: flight {where} has {f['files']} of {rule.min_files} expected files"
    return Alert(
        id=f"incomplete_flight.{f['id']}" + (".resolved" if resolved else ""), level="warning",
        kind="incomplete_flight", job=f["job"], run_id=f["id"], source=SOURCE, at=now,
        fingerprint=f"incomplete_flight:{f['job']}", resolved=resolved, summary=summary,
        text="" if resolved else N_("Part of the flight's images did not arrive: the upload was cut off, the card "
                                    "was full, or the drone turned back early. Check the flight before it is "
                                    "processed."),
        details={"watch": f["watch"], "folder": folder, "files": f["files"], "min_files": rule.min_files,
                 "partial": f["partial"], "reason": f["reason"], "flight": f["id"]})
