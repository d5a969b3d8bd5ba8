"""The checker: after a scenario, three lists side by side, what was due, what history recorded and
what the jobs did (the ledger), and the figures of one table row."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from faultkit.load import LedgerLine

TERMINAL = ("succeeded", "missed", "skipped", "dead")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


@dataclass
class Due:
    run_id: str
    job: str
    at: float  # the instant, or when the file was complete (epoch seconds)


@dataclass
class Row:
    run_id: str
    job: str
    state: str
    attempt: int
    reason: str | None
    scheduled_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime  # the last event's time
    created_at: datetime  # when history first wrote the row (Postgres' clock, the same host)

    def recorded_at(self) -> float:
        """When this state was done *and* on record: the later of the event and of the row's
        first write (late when history or Postgres was down)."""
        return max((self.finished_at or self.updated_at).timestamp(), self.created_at.timestamp())


@dataclass
class Report:
    scenario: str
    due: int = 0
    run: int = 0  # succeeded
    not_run: dict[str, int] = field(default_factory=dict)  # "missed: <reason>" -> count (also skipped, dead)
    lost: list[str] = field(default_factory=list)  # due, but no terminal row
    duplicate_effects: int = 0  # effects beyond one per run
    duplicates: list[str] = field(default_factory=list)  # "<run id> <job> <key>: effects of attempt 1 at ..."
    executions: int = 0  # job starts (ledger) for due runs
    rerun: int = 0  # due runs started more than once
    late_p90_s: float | None = None  # how late jobs started before the fault (90th percentile)
    mid_job: bool = True  # the fault found every job mid-run (Timing.guard); False: some job was
    # between its effect and its report, so a kill could repeat that effect
    recovery_s: float | None = None
    caught_up_s: float | None = None
    anomalies: list[str] = field(default_factory=list)  # cross-checks that should be empty
    fault_at: float = 0.0
    heal_at: float = 0.0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reason_group(row: Row) -> str:
    text = _STAMP.sub("<t>", row.reason or "no reason given")
    return f"{row.state}: {text}"


def check(scenario: str, due: list[Due], rows: list[Row], ledger: list[LedgerLine], fault_at: float,
          heal_at: float, served: set[str] | None = None) -> Report:
    """`served`: the jobs whose runs the hurt component serves (the file job for the watcher and
    the dispatcher); the recovery time is measured on those. None: every job."""
    report = Report(scenario=scenario, due=len(due), fault_at=fault_at, heal_at=heal_at)
    by_id = {r.run_id: r for r in rows}
    due_ids = {d.run_id for d in due}
    ends: dict[str, list[LedgerLine]] = defaultdict(list)
    starts: Counter[str] = Counter()
    for line in ledger:
        if line.run_id not in due_ids:
            continue  # before the window or after the cut-off
        if line.kind == "end":
            ends[line.run_id].append(line)
        else:
            starts[line.run_id] += 1
    not_run: Counter[str] = Counter()
    for d in due:
        row = by_id.get(d.run_id)
        if row is None or row.state not in TERMINAL:
            report.lost.append(f"{d.run_id} {d.job} at {d.at:.3f}: " + (f"history says {row.state}" if row
                                                                         else "no history row"))
            continue
        if row.state == "succeeded":
            report.run += 1
            if not ends.get(d.run_id):
                report.anomalies.append(f"{d.run_id} {d.job}: succeeded in history, but the job left no effect")
        else:
            not_run[reason_group(row)] += 1
            if ends.get(d.run_id):
                report.anomalies.append(f"{d.run_id} {d.job}: an effect, but history says {row.state}")
    report.not_run = dict(not_run.most_common())
    for run_id, lines in sorted(ends.items()):
        if len(lines) > 1:
            report.duplicate_effects += len(lines) - 1
            # when each effect happened, from the fault: before it, the effect was done but not yet
            # reported; after it, by an attempt that began before it, the job ran on through it
            times = ", ".join(f"attempt {line.attempt} at {line.at - fault_at:+.2f}s" for line in lines)
            job = by_id[run_id].job if run_id in by_id else "?"
            report.duplicates.append(f"{run_id} {job} {lines[0].key}: effects of {times} (from the fault)")
    report.late_p90_s = _lateness(due, ledger, fault_at)
    report.executions = sum(starts.values())
    report.rerun = sum(1 for n in starts.values() if n > 1)
    report.recovery_s = _recovery([d for d in due if served is None or d.job in served], by_id, fault_at, heal_at)
    report.caught_up_s = _caught_up(due, by_id, heal_at)
    return report


def _lateness(due: list[Due], ledger: list[LedgerLine], fault_at: float) -> float | None:
    """The 90th percentile of (job start - its instant or file drop) before the fault: a system
    that cannot keep up with its load has jobs ending at every moment."""
    at = {d.run_id: d.at for d in due}
    late = sorted(line.at - at[line.run_id] for line in ledger
                  if line.kind == "start" and line.run_id in at and line.attempt == 1 and line.at < fault_at)
    if not late:
        return None
    return round(late[min(len(late) - 1, int(len(late) * 0.9))], 2)


def _recovery(due: list[Due], by_id: dict[str, Row], fault_at: float, heal_at: float) -> float | None:
    """From the heal to the first success (done and on record) of something due at or after the
    fault; 0 when that came before the heal (the rest of the system carried the load meanwhile)."""
    finished = [row.recorded_at() for d in due if d.at >= fault_at
                for row in [by_id.get(d.run_id)] if row is not None and row.state == "succeeded"]
    if not finished:
        return None
    return round(max(0.0, min(finished) - heal_at), 1)


def _caught_up(due: list[Due], by_id: dict[str, Row], heal_at: float) -> float | None:
    """From the heal to the last terminal record of what was due before it: the backlog gone."""
    settled = [max(row.updated_at.timestamp(), row.created_at.timestamp()) for d in due if d.at < heal_at
               for row in [by_id.get(d.run_id)] if row is not None and row.state in TERMINAL]
    if not settled:
        return None
    return round(max(0.0, max(settled) - heal_at), 1)
