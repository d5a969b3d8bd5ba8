"""The `digest` chore: gather a summary of the last period and hand it to the notifier, which
renders and delivers it like any notification (retries, delivery records, escalation).

From history (one query, shared/queries.py DigestQuery): runs by job and state, dead runs,
overdue jobs, runs per hour or day. Files and flights received are the runs of the jobs triggered
by each watch (`on_file`, `on_batch`: the largest count among a watch's jobs). Disk space is read
here, on the runner's machine. The run succeeds once every channel's notification is in the
outbox; its id is derived from the run, so a retried run does not send twice.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from services.runner.chores.errors import ChoreFailed
from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.catalog import Catalog
from shared.chores import Digest
from shared.config import JobSpec
from shared.digest import DigestDisk, DigestReport
from shared.events import Notification, utcnow
from shared.queries import DigestQuery
from shared.reply import ask

QUERY_TIMEOUT = 30.0


def disk(path: str) -> DigestDisk:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return DigestDisk(path=path, error=exc.strerror or str(exc))
    return DigestDisk(path=path, free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


def received(catalog: Catalog, by_kind: dict[str, dict[str, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """(files, flights) per watch, from the file and batch runs of the jobs each watch triggers."""
    files: dict[str, int] = {}
    flights: dict[str, int] = {}
    for name, spec in catalog.specs.items():
        job = spec.job
        counts = by_kind.get(name, {})
        if job.on_file:
            files[job.on_file] = max(files.get(job.on_file, 0), counts.get("file", 0))
        if job.on_batch:
            flights[job.on_batch.watch] = max(flights.get(job.on_batch.watch, 0), counts.get("batch", 0))
    return files, flights


async def gather(chore: Digest, bus: Bus, catalog: Catalog, spec: JobSpec, run_id: str) -> DigestReport:
    until = utcnow()
    since = until - timedelta(seconds=chore.period)
    query = DigestQuery(since=since, until=until, bucket="hour" if chore.period <= 2 * 86400 else "day",
                        timezone=catalog.system.timezone, max_failures=chore.max_failures,
                        exclude_run=run_id)
    try:
        reply = json.loads(await ask(bus.nc, wire.HISTORY_REPORT_DIGEST, query.model_dump_json().encode(),
                                     QUERY_TIMEOUT))
    except Exception as exc:
        raise ChoreFailed(f"no answer from the history service ({type(exc).__name__}); is it running?") from None
    if not reply.get("ok"):
        raise ChoreFailed(f"history refused the digest query: {reply.get('error')}")
    data: dict[str, Any] = reply["data"]
    files, flights = received(catalog, data.get("by_kind") or {})
    paths = chore.disks or [*(w.path for w in catalog.watches.values()), *catalog.system.cleanup_roots]
    return DigestReport(job=spec.name, run_id=run_id, title=chore.title, since=since, until=until,
                        by_job=data["by_job"], failures=data["failures"], failures_total=data["failures_total"],
                        files=files, flights=flights, disks=[disk(p) for p in dict.fromkeys(paths)],
                        overdue=data["overdue"], bucket=query.bucket, buckets=data["buckets"],
                        series=data["series"])


async def send_digest(chore: Digest, bus: Bus, catalog: Catalog, spec: JobSpec,
                      run_id: str) -> tuple[dict[str, Any], str]:
    report = await gather(chore, bus, catalog, spec, run_id)
    items = []
    ids = []
    for channel in chore.channels:
        n = Notification(id=f"{channel}.digest.{run_id}"[:200], channel=channel, group_key=f"digest:{spec.name}",
                         status="digest", alerts=[], total=0, created_at=report.until, digest=report)
        items.append((wire.notify_subject(channel), n.to_bytes(), n.id))
        ids.append(n.id)
    await publish_until_acked(bus, items, f"runner: digest {run_id}")
    runs = sum(sum(s.values()) for s in report.by_job.values())
    result = {"notifications": ids, "channels": list(chore.channels), "since": report.since.isoformat(),
              "until": report.until.isoformat(), "runs": runs, "dead": report.failures_total,
              "jobs": len(report.by_job), "overdue": [o.job for o in report.overdue]}
    summary = (f"digest of {runs} runs ({report.failures_total} dead) since {report.since.isoformat()} "
               f"queued for {', '.join(chore.channels)}")
    return result, summary
