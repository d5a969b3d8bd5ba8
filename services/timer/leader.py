"""The timer's leader lease: one active timer at a time (shared/lease.py)."""

from __future__ import annotations

from nats.js.kv import KeyValue

from shared import wire
from shared.lease import Lease


class LeaderLease(Lease):
    """The lease under wire.TIMER_LEADER_KEY of a service's own bucket (the timer's; the notifier
    uses the same key in its bucket)."""

    def __init__(self, kv: KeyValue, holder: str, ttl: float, role: str = "timer") -> None:
        super().__init__(kv, wire.TIMER_LEADER_KEY, holder, ttl, role)
