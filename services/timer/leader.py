"""One active timer at a time: a lease in the timer KV bucket, taken and renewed with
compare-and-set. A second timer stands by and takes over once the lease expires. Deterministic
tick ids (Nats-Msg-Id) still collapse duplicates if two ever overlap (e.g. a paused leader)."""

from __future__ import annotations

import json
import logging
import time

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import wire

log = logging.getLogger("cropcron.timer")


class LeaderLease:
    def __init__(self, kv: KeyValue, holder: str, ttl: float) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl = ttl
        self._revision: int | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl}).encode()

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; False if another timer holds it."""
        try:
            entry = await self.kv.get(wire.TIMER_LEADER_KEY)
        except (KeyNotFoundError, KeyDeletedError):
            try:
                self._revision = await self.kv.create(wire.TIMER_LEADER_KEY, self._value())
                return True
            except KeyWrongLastSequenceError:
                return False
        current = json.loads(entry.value or b"{}")
        if current.get("holder") != self.holder and current.get("expires_at", 0) > time.time():
            self._revision = None
            return False
        try:
            self._revision = await self.kv.update(wire.TIMER_LEADER_KEY, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            self._revision = None
            return False
        return True

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        try:
            self._revision = await self.kv.update(wire.TIMER_LEADER_KEY, self._value(), last=self._revision)
            return True
        except KeyWrongLastSequenceError:
            log.warning("timer %s lost the leader lease; standing by", self.holder)
            self._revision = None
            return False

    async def release(self) -> None:
        if self._revision is not None:
            try:
                await self.kv.delete(wire.TIMER_LEADER_KEY, last=self._revision)
            except KeyWrongLastSequenceError:
                pass
            self._revision = None
