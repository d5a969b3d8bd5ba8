"""The fault suite (issue 9 part 5, RELIABILITY §7): each component killed, stalled past ack_wait or
restarted under a steady load of ledger-writing jobs (tests/faultkit), then what was due, what
history recorded and what the jobs did compared. Nothing due may be lost; an effect may repeat
only where at-least-once delivery allows it (faultkit.scenario.AT_LEAST_ONCE, docs/reliability.md).

Every component is hurt at least once and every fault kind is used, with lighter settings than
`python bench/faults.py`, which runs all 27 scenarios with the full ones (30 s stalls) for the
table in docs/reliability.md: 5 jobs a second, a 7 s stall (more than twice the tests' 3 s
ack_wait, so stalled deliveries do expire), 3 s down after a kill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit.load import Load
from faultkit.procs import Postgres
from faultkit.scenario import Scenario, Timing, run
from faultkit.table import row

LOAD = Load(jobs=5, interval=1.0, job_seconds=0.5, files_per_second=2.0)
TIMING = Timing(warmup=3, stall=7, down=3, after=4, drain=90)

CASES = [
    Scenario("broker", "kill"),
    Scenario("postgres", "kill"),
    Scenario("runner", "kill"),
    Scenario("runner", "stop"),
    Scenario("timer", "kill"),
    Scenario("timer", "stop"),
    Scenario("history", "stop"),
    Scenario("notifier", "kill"),
    Scenario("watcher", "kill"),
    Scenario("dispatcher", "restart"),
    Scenario("up", "kill"),
]


@pytest.fixture(scope="module")
def killable_pg() -> Iterator[Postgres]:
    """A Postgres the postgres scenario may kill (the session's one is shared with other tests)."""
    pg = Postgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", CASES, ids=[s.name for s in CASES])
async def test_nothing_due_is_lost(scenario: Scenario, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if scenario.component == "postgres":
        pg: Postgres | None = request.getfixturevalue("killable_pg")
        assert pg is not None
        admin = pg.url
    else:
        pg, admin = None, request.getfixturevalue("pg_admin_url")
    report = await run(scenario, LOAD, TIMING, tmp_path, admin, pg)
    summary = row(scenario, report)
    assert report.due > 0 and report.run > 0, summary
    assert report.lost == [], f"{summary}\nlost: {report.lost[:20]}"
    assert report.anomalies == [], f"{summary}\n{report.anomalies[:20]}"
    assert report.notes == [], f"{summary}\n{report.notes}"
    # the fault found every job mid-run (none between its effect and its report), so that a
    # repeated effect means a job outlived its process or ran twice, not at-least-once delivery
    assert report.mid_job, summary
    if not scenario.duplicates_allowed:
        # a killed runner's job dies with it (the reaper), a timer's or dispatcher's replay has the
        # same ids, history's redeliveries are upserts: no effect twice
        assert report.duplicate_effects == 0, f"{summary}\n{report.duplicates}"
    # every scenario makes the system work through the fault, not around it
    assert report.recovery_s is not None, summary
