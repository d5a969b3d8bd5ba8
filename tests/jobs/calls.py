"""Callables for `call:` jobs in tests."""

from __future__ import annotations

import time

from cropcron.jobs import RunContext


def echo(ctx: RunContext) -> dict[str, object]:
    return {"run_id": ctx.run_id, "attempt": ctx.attempt, "kind": ctx.kind}


def busy(ctx: RunContext) -> int:
    """CPU-bound for ~2 s: the runner's loop must keep heartbeating meanwhile."""
    end, n = time.monotonic() + 2.0, 0
    while time.monotonic() < end:
        n += 1
    return n


def noop(ctx: RunContext) -> None:
    return None


def nap(ctx: RunContext) -> None:
    """Holds its run slot for half a second, sleeping."""
    time.sleep(0.5)
