"""Cluster-wide limits on one job's concurrent runs, for the overlap policy.

Each job with a limit has one KV key (its subject key) holding its active runs: {run_id: expires_at}. Runners
change it only by compare-and-set, so two runners can never both take the last place. A lease
is renewed with the job's heartbeat and expires if its runner dies, so a dead runner cannot
block a job forever. A redelivered run takes over its own entry (same run_id).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.names import subject_key

CAS_ATTEMPTS = 50


class Leases:
    def __init__(self, kv: KeyValue, ttl: float) -> None:
        self.kv = kv
        self.ttl = ttl

    async def _read(self, job: str) -> tuple[dict[str, float], int | None]:
        try:
            entry = await self.kv.get(subject_key(job))
        except (KeyNotFoundError, KeyDeletedError):
            return {}, None
        return (json.loads(entry.value) if entry.value else {}), entry.revision

    async def _write(self, job: str, data: dict[str, float], revision: int | None) -> bool:
        payload = json.dumps(data).encode()
        try:
            if revision is None:
                await self.kv.create(subject_key(job), payload)
            else:
                await self.kv.update(subject_key(job), payload, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _change(self, job: str, run_id: str, limit: int | None, keep: bool, existing_only: bool = False) -> bool:
        for _ in range(CAS_ATTEMPTS):
            data, revision = await self._read(job)
            now = time.time()
            if existing_only and data.get(run_id, 0) <= now:
                return False
            active = {r: exp for r, exp in data.items() if exp > now and r != run_id}
            if keep:
                if limit is not None and len(active) >= limit:
                    return False
                active[run_id] = now + self.ttl
            if await self._write(job, active, revision):
                return True
            await asyncio.sleep(random.uniform(0.001, 0.01))  # another runner won the race
        raise RuntimeError(f"lease for job {job!r}: too much contention")

    async def acquire(self, job: str, run_id: str, limit: int) -> bool:
        return await self._change(job, run_id, limit, keep=True)

    async def renew(self, job: str, run_id: str) -> None:
        """Extend the run's lease if it still holds one: a renewal racing the release, or arriving
        after the lease expired (and another run may have taken the place), must not re-create it."""
        await self._change(job, run_id, None, keep=True, existing_only=True)

    async def release(self, job: str, run_id: str) -> None:
        await self._change(job, run_id, None, keep=False)
