"""The job every benchmark run calls: it does nothing, so what is measured is the scheduling
backbone itself (timer -> JetStream -> runner -> run events -> history -> Postgres)."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> None:
    return None
