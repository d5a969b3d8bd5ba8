"""A saturated runner takes higher-priority triggers first."""

from __future__ import annotations

from pathlib import Path

import ledger
from conftest import System, apply_yaml, fetch, wait_for

from cropcron import commands
from shared.bus import Bus


async def test_saturated_runner_prefers_higher_priority(system: System, bus: Bus, db_url: str,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    jobs = "".join(f"""
  - name: {name}
    type: batch_detection
    priority: {prio}
    overlap: allow
    run: ["{{python}}", tests/jobs/ledger.py, "{path}", "{{job}}", "{{attempt}}", "{sleep}", "0"]
""" for name, prio, sleep in (("blocker", 5, 3), ("hi", 9, 0.1), ("mid", 5, 0.1), ("lo", 2, 0.1)))
    await apply_yaml(bus, "jobs:" + jobs)
    await system.start("history", "runner", concurrency=1)
    await commands.run_now(bus, "blocker", wait=None)
    await wait_for(lambda: _started(path, 1), 15, "the blocker to occupy the only slot")
    for name in ("lo", "mid", "hi", "lo", "mid", "hi"):  # queued while saturated, low first
        await commands.run_now(bus, name, wait=None)
    await wait_for(lambda: _started(path, 7), 40, "every queued run")
    order = [e.run_id for e in ledger.read(path) if e.kind == "start"]  # the job name, see argv
    assert order == ["blocker", "hi", "hi", "mid", "mid", "lo", "lo"], order

    async def all_done() -> bool:
        rows = await fetch(db_url, "SELECT state FROM runs")
        return len(rows) == 7 and all(r["state"] == "succeeded" for r in rows)

    await wait_for(all_done, 20, "all runs recorded")


async def _started(path: Path, n: int) -> bool:
    return len([e for e in ledger.read(path) if e.kind == "start"]) >= n
