"""The API a `call:` job's Python function receives.

    def my_job(ctx: RunContext) -> dict: ...        # sync: runs in a worker thread
    async def my_job(ctx: RunContext) -> dict: ...  # async: runs on a worker thread's own loop

The return value must be JSON-serialisable; it becomes the run's `result`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RunContext:
    run_id: str
    job: str
    job_type: str
    attempt: int
    kind: str  # tick | manual | file | batch
    scheduled_at: datetime | None
    # trigger details. kind "file": the FileEvent's fields (docs/events.md), with "path" replaced by
    # the absolute path the runner checked inside the watch root (a str; os.fsencode(path) gives the
    # exact bytes). kind "batch": "batch" (id, watch, folder, partial, reason, files, ...) and
    # "manifest", the path of the manifest file written for this run (docs/watcher-dispatch.md)
    data: dict[str, Any]
