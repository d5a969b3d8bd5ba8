"""Reading the ledger the test job writes (tests/jobs/ledger.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Entry:
    kind: str
    run_id: str
    attempt: int
    at: float
    pid: int


def read(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, run_id, attempt, at, pid = line.split()
        out.append(Entry(kind, run_id, int(attempt), float(at), int(pid)))
    return out


def intervals(entries: list[Entry]) -> list[tuple[float, float]]:
    """(start, end) per execution, matched by (run_id, attempt)."""
    starts = {(e.run_id, e.attempt, e.pid): e.at for e in entries if e.kind == "start"}
    return sorted((starts[(e.run_id, e.attempt, e.pid)], e.at) for e in entries
                  if e.kind == "end" and (e.run_id, e.attempt, e.pid) in starts)
