"""Catch-up decisions, kept pure so they are unit-tested without a broker.

Given the instants a job should have fired while nobody was firing them, decide which run now
and which are recorded as `missed`, with the reason. An instant its schedule says never runs (a
sun schedule's day without the event) is missed with the schedule's own reason, whatever the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.config import Catchup
from shared.schedule import Schedule


@dataclass
class Plan:
    run: list[datetime] = field(default_factory=list)
    missed: list[tuple[datetime, str]] = field(default_factory=list)
    # instants beyond the enumeration cap, reported as one summary: (count, first, last)
    overflow: tuple[int | None, datetime, datetime] | None = None


def plan_catchup(
    schedule: Schedule,
    after: datetime,
    now: datetime,
    policy: Catchup,
    window: float,
    limit: int,
    cause: str = "timer was not running",
) -> Plan:
    """Instants in (after, now]: those older than `window` are missed; the rest follow `policy`."""
    plan = Plan()
    recent = schedule.latest(after, now, limit + 1)
    if len(recent) > limit:
        # a long outage of a frequent job: the most recent `limit` are decided one by one, the
        # older ones reported as one summary (counted where that is cheap)
        last_dropped = recent.pop(0)
        first_dropped = schedule.next_after(after) or last_dropped
        plan.overflow = (schedule.count(after, last_dropped), first_dropped, last_dropped)
    instants = []
    for t in recent:
        reason = schedule.no_run_reason(t)
        if reason is None:
            instants.append(t)
        else:
            plan.missed.append((t, reason))
    horizon = now - timedelta(seconds=window)
    in_window = [t for t in instants if t >= horizon]
    for t in instants:
        if t < horizon:
            plan.missed.append((t, f"{cause}; older than catchup_window ({window:g}s)"))
    if not in_window:
        plan.missed.sort()
        return plan
    if policy is Catchup.ALL:
        plan.run = in_window
    elif policy is Catchup.LATEST:
        plan.run = [in_window[-1]]
        latest = in_window[-1].isoformat()
        plan.missed += [(t, f"{cause}; catchup=latest ran {latest} instead") for t in in_window[:-1]]
    else:
        plan.missed += [(t, f"{cause}; catchup=skip") for t in in_window]
    plan.missed.sort()
    return plan
