"""`call:` jobs: Python functions the runner calls with a RunContext; the return value is stored
as the run's result."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cropcron.jobs import RunContext

# call: jobs run inside the runner, whose working directory is not the config's: resolve paths
# from this file (the run: jobs write under examples/data/)
REPORTS = Path(__file__).resolve().parent.parent / "data" / "reports"


def weekly_report(ctx: RunContext) -> dict[str, object]:
    reports = sorted(REPORTS.glob("images-*.json"))
    images = sum(json.loads(p.read_text()).get("images", 0) for p in reports)
    return {"run_id": ctx.run_id, "reports": len(reports), "images": images}


def cleanup(ctx: RunContext, max_age_days: float = 30) -> dict[str, object]:
    cutoff = time.time() - max_age_days * 86400
    removed = 0
    for path in REPORTS.glob("*.json"):
        if path.stat().st_mtime < cutoff:
            path.unlink()
            removed += 1
    return {"removed": removed}
