"""Helpers shared by the bench scripts: child processes that are always stopped by PID, CPU/RSS
sampling with psutil, percentiles and the results table.

Every script registers its children here; they are stopped on normal exit, on an exception and
on SIGINT/SIGTERM (turned into SystemExit so `finally` blocks and atexit run).
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
# the code under test: this checkout, or a snapshot of it (CROPCRON_BENCH_SOURCE=DIR, e.g. made with
# `git archive HEAD | tar -x -C DIR`), so a long run is not measuring files being edited meanwhile
ROOT = Path(os.environ.get("CROPCRON_BENCH_SOURCE") or BENCH_DIR.parent).resolve()
sys.path.insert(1, str(ROOT))
RESULTS_DIR = BENCH_DIR / "results"  # raw JSON and service logs (git-ignored)


class Children:
    """Processes this script started; stop_all() ends each one by its PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out: Any = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115 - the child writes it for its lifetime
        try:
            proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        finally:
            if log is not None:
                out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self, timeout: float = 15.0) -> None:
        for proc in list(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in list(self.procs):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def exit_on_signals() -> None:
    """SIGTERM/SIGINT -> SystemExit, so cleanup code runs (children are stopped by PID)."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes (threads included)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def rss_mb(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median_of(rows: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    if isinstance(values[0], (int, float)):
        return statistics.median(values)
    return values[0]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file: Any = None) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.rjust(w) if index else c.ljust(w) for c, w in zip(row, widths, strict=True))
                     + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # several service processes per host: each health/metrics endpoint on a free port
    env = {"CROPCRON_HTTP_PORT": "0", **os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}
    env.pop("PYTHONSTARTUP", None)
    return env


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


CHILDREN_TIMEOUT = 20 * 60.0  # one measurement's subprocess never runs longer than this
