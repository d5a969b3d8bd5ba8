"""`call:` jobs: Python functions the runner calls with a RunContext; the return value is stored
as the run's result."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cropcron.jobs import RunContext


def weekly_report(ctx: RunContext) -> dict[str, object]:
    reports = sorted(Path("data/reports").glob("images-*.json"))
    images = sum(json.loads(p.read_text()).get("images", 0) for p in reports)
    return {"run_id": ctx.run_id, "reports": len(reports), "images": images}


def cleanup(ctx: RunContext, max_age_days: float = 30) -> dict[str, object]:
    cutoff = time.time() - max_age_days * 86400
    removed = 0
    for path in Path("data/reports").glob("*.json"):
        if path.stat().st_mtime < cutoff:
            path.unlink()
            removed += 1
    return {"removed": removed}
