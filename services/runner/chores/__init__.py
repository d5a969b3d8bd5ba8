"""Built-in chores (`builtin:` in a job; shared/chores.py): run by the runner itself, as ordinary
runs. Each returns a JSON result (the run's `result`) and a few lines of summary (its output),
or raises ChoreFailed with the reason; the runner applies the job's timeout, retries and alerts
exactly as for `run:` and `call:` jobs."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from services.runner.chores.backup import backup_history
from services.runner.chores.cleanup import CleanupRefused, cleanup
from services.runner.chores.digest import send_digest
from services.runner.chores.errors import ChoreFailed
from services.runner.execute import Outcome
from services.runner.reaper import Reaper
from shared.bus import Bus
from shared.catalog import Catalog
from shared.chores import BackupHistory, CleanupFiles, Digest
from shared.config import JobSpec
from shared.settings import ServiceSettings


@dataclass
class ChoreRun:
    """What a chore may use: the runner's bus, catalog and settings, and the run it is."""

    bus: Bus
    catalog: Catalog
    settings: ServiceSettings
    reaper: Reaper | None
    spec: JobSpec
    run_id: str


async def _cleanup(chore: CleanupFiles, run: ChoreRun) -> tuple[dict[str, Any], str]:
    stop = threading.Event()  # a timeout stops the deleting thread between two files
    task = asyncio.ensure_future(asyncio.to_thread(cleanup, chore, list(run.catalog.system.cleanup_roots), stop))
    try:
        report = await asyncio.shield(task)
    except asyncio.CancelledError:  # the timeout, or the runner stopping
        stop.set()
        await asyncio.wait([task], timeout=5)
        raise
    except CleanupRefused as exc:
        raise ChoreFailed(f"refused: {exc}") from None
    return report.result(), report.summary()


async def run_builtin(run: ChoreRun, timeout: float) -> Outcome:
    chore = run.spec.job.builtin
    assert chore is not None
    try:
        async with asyncio.timeout(timeout):
            if isinstance(chore, CleanupFiles):
                result, summary = await _cleanup(chore, run)
            elif isinstance(chore, BackupHistory):
                result, summary = await backup_history(chore, run.settings, run.reaper, run.run_id)
            elif isinstance(chore, Digest):
                result, summary = await send_digest(chore, run.bus, run.catalog, run.spec, run.run_id)
            else:  # pragma: no cover - the config model admits only the chores above
                return Outcome(ok=False, error=f"unknown chore {chore!r}")
    except TimeoutError:
        return Outcome(ok=False, timed_out=True, error=f"timed out after {timeout:g}s; chore {chore.chore} stopped")
    except ChoreFailed as exc:
        return Outcome(ok=False, error=f"{chore.chore}: {exc}", output_tail=exc.output)
    except OSError as exc:  # a folder removed or unwritable midway: a failure of the run, retried
        return Outcome(ok=False, error=f"{chore.chore}: {type(exc).__name__}: {exc}")
    return Outcome(ok=True, result=result, output_tail=summary)
