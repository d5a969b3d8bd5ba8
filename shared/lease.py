"""One active instance at a time: a lease in a KV bucket, taken and renewed with compare-and-set.
Used by the timer (leader), the dispatcher (its open batches live in the active one's memory) and
the notifier (its groups likewise); the others stand by and take over once the lease expires.
Deterministic ids still collapse duplicates if two ever overlap (e.g. a paused holder)."""

from __future__ import annotations

import json
import logging
import time

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("cropcron.lease")


class Lease:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl: float, role: str) -> None:
        self.role = role  # for the log: "timer", "dispatcher", ...
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._revision: int | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl}).encode()

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; False if another holder has it."""
        try:
            entry = await self.kv.get(self.key)
        except (KeyNotFoundError, KeyDeletedError):
            entry = None
        if entry is None or not entry.value:
            try:
                if entry is None:
                    self._revision = await self.kv.create(self.key, self._value())
                else:  # a delete marker (released): replace exactly it
                    self._revision = await self.kv.update(self.key, self._value(), last=entry.revision)
                return True
            except KeyWrongLastSequenceError:
                return False
        current = json.loads(entry.value)
        if current.get("holder") != self.holder and current.get("expires_at", 0) > time.time():
            self._revision = None
            return False
        try:
            self._revision = await self.kv.update(self.key, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            self._revision = None
            return False
        return True

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        try:
            self._revision = await self.kv.update(self.key, self._value(), last=self._revision)
            return True
        except KeyWrongLastSequenceError:
            log.warning("%s %s lost the lease; standing by", self.role, self.holder)
            self._revision = None
            return False

    async def release(self) -> None:
        if self._revision is not None:
            try:
                await self.kv.delete(self.key, last=self._revision)
            except KeyWrongLastSequenceError:
                pass
            self._revision = None
