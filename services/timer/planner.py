"""Catch-up decisions, kept pure so they are unit-tested without a broker.

Given the instants a job should have fired while nobody was firing them, decide which run now
and which are recorded as `missed`, with the reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.config import Catchup
from shared.schedule import Schedule


@dataclass
class Plan:
    run: list[datetime] = field(default_factory=list)
    missed: list[tuple[datetime, str]] = field(default_factory=list)
    # instants beyond the enumeration cap, reported as one summary: (count, first, last)
    overflow: tuple[int, datetime, datetime] | None = None


def plan_catchup(
    schedule: Schedule,
    after: datetime,
    now: datetime,
    policy: Catchup,
    window: float,
    limit: int,
) -> Plan:
    """Instants in (after, now]: those older than `window` are missed; the rest follow `policy`."""
    plan = Plan()
    # one pass: keep the most recent `limit` instants, count and bound the older ones
    recent: deque[datetime] = deque(maxlen=limit)
    dropped, first_dropped, last_dropped = 0, None, None
    for t in schedule.between(after, now, 10**9):
        if len(recent) == limit:
            last_dropped = recent[0]
            first_dropped = first_dropped or last_dropped
            dropped += 1
        recent.append(t)
    if dropped and first_dropped and last_dropped:
        plan.overflow = (dropped, first_dropped, last_dropped)
    instants = list(recent)
    horizon = now - timedelta(seconds=window)
    in_window = [t for t in instants if t >= horizon]
    for t in instants:
        if t < horizon:
            plan.missed.append((t, f"timer was not running; older than catchup_window ({window:g}s)"))
    if not in_window:
        return plan
    if policy is Catchup.ALL:
        plan.run = in_window
    elif policy is Catchup.LATEST:
        plan.run = [in_window[-1]]
        latest = in_window[-1].isoformat()
        plan.missed += [(t, f"timer was not running; catchup=latest ran {latest} instead") for t in in_window[:-1]]
    else:
        plan.missed += [(t, "timer was not running; catchup=skip") for t in in_window]
    plan.missed.sort()
    return plan
