"""One active instance at a time: a lease in a KV bucket, taken and renewed with compare-and-set.
Used by the timer (leader), the dispatcher (its open batches live in the active one's memory) and
the notifier (its groups likewise); the others stand by and take over once the lease expires.
Deterministic ids still collapse duplicates if two ever overlap (e.g. a paused holder).

A broker that is restarting answers KV calls with timeouts, "no responders" or JetStream 503s for a
while. None of that means another instance holds the lease, so none of it may crash the holder:
an error is "not renewed yet". The holder keeps the lease until its own last successful write
runs out (by the monotonic clock, so a stepped wall clock cannot stretch it), then steps down and
tries to take it again like any standby. Only a compare-and-set conflict means someone else has it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import wire
from shared.bus import TRANSIENT_ERRORS as TRANSIENT

log = logging.getLogger("cropcron.lease")


class Lease:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl: float, role: str) -> None:
        self.role = role  # for the log: "timer", "dispatcher", ...
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._revision: int | None = None
        self._valid_until = 0.0  # monotonic: the last successful write + ttl
        self._failing = False  # an error is being reported; log the first and the recovery only

    @property
    def held(self) -> bool:
        return self._revision is not None

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl}).encode()

    def _took(self, revision: int, started: float) -> None:
        self._revision = revision
        # counted from before the write: the lease may have been stored a moment after we asked
        self._valid_until = started + self.ttl
        if self._failing:
            log.info("%s %s: lease store reachable again", self.role, self.holder)
            self._failing = False

    def _transient(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            log.warning("%s %s: cannot %s the lease (%r); the broker may be restarting, trying again",
                        self.role, self.holder, what, exc)
            self._failing = True

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; False if another holder has it or the
        lease store cannot be reached right now."""
        started = time.monotonic()
        try:
            try:
                entry = await self.kv.get(self.key)
            except (KeyNotFoundError, KeyDeletedError):
                entry = None
            if entry is None or not entry.value:
                if entry is None:
                    revision = await self.kv.create(self.key, self._value())
                else:  # a delete marker (released): replace exactly it
                    revision = await self.kv.update(self.key, self._value(), last=entry.revision)
                self._took(revision, started)
                return True
            current = json.loads(entry.value)
            if current.get("holder") != self.holder and current.get("expires_at", 0) > time.time():
                self._revision = None
                return False
            self._took(await self.kv.update(self.key, self._value(), last=entry.revision), started)
            return True
        except KeyWrongLastSequenceError:
            self._revision = None
            return False
        except TRANSIENT as exc:
            self._transient("take", exc)
            self._revision = None
            return False

    async def renew(self) -> bool:
        """True while the lease is ours: renewed now, or not renewable right now but still within
        the time our last write bought. False once someone else has it or that time ran out."""
        if self._revision is None:
            return False
        started = time.monotonic()
        try:
            # a request to a vanished broker waits out the whole request timeout: bound each try
            # so that a holder gets several before its lease runs out, and never sits past it
            update = self.kv.update(self.key, self._value(), last=self._revision)
            budget = min(self.ttl / 3, self._valid_until - started)
            self._took(await asyncio.wait_for(update, max(budget, 0.05)), started)
            return True
        except KeyWrongLastSequenceError:
            log.warning("%s %s lost the lease; standing by", self.role, self.holder)
        except TRANSIENT as exc:
            self._transient("renew", exc)
            if time.monotonic() < self._valid_until:
                return True
            log.warning("%s %s: lease not renewed for %.0fs; standing by until it can be taken again",
                        self.role, self.holder, self.ttl)
        self._revision = None
        return False

    async def release(self) -> None:
        if self._revision is not None:
            try:
                await self.kv.delete(self.key, last=self._revision)
            except (KeyWrongLastSequenceError, *TRANSIENT) as exc:
                # someone took it meanwhile, or the broker is away: it expires on its own
                log.debug("%s %s: lease not released (%r)", self.role, self.holder, exc)
            self._revision = None


class LeaderLease(Lease):
    """The lease under wire.TIMER_LEADER_KEY of a service's own bucket (the timer's; the notifier
    uses the same key in its bucket)."""

    def __init__(self, kv: KeyValue, holder: str, ttl: float, role: str = "timer") -> None:
        super().__init__(kv, wire.TIMER_LEADER_KEY, holder, ttl, role)
