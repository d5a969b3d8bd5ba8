"""cropcron on a three-node JetStream cluster (issue 13, docs/scale-out.md) beside one node: the
same services (two timers, two runners, history, notifier, each its own process) under N interval
jobs firing every second, first on one nats-server with every stream at one replica (R1), then
on three nodes with three replicas (R3); then, on R3, the leader of the triggers stream killed
(kill -9) a few times: the time from its death to the first job start and the first success on
record of an instant due after it.

    python bench/cluster.py                           # 25 and 50 jobs/s, 20 s windows, 3 deaths
    python bench/cluster.py --jobs 25,50,100 --seconds 30 --deaths 5
    python bench/cluster.py --nats-sync 1s            # the nodes fsync every second, not every message

Each job is tests/jobs/effect.sh (a shell appending to a ledger; --job-seconds of sleep), the fault
suite's job, so each run also costs a process start: on a 2-core machine that, not the broker,
is what limits the rate (read "recorded/s" against "due/s"). Figures: due/s (instants of the
window), recorded/s (of those, the runs that reached `succeeded` in history by the window's end,
per second: below due/s when the system falls behind), lateness of job starts (p50/p99 of start -
instant), lost and duplicate effects from the fault suite's checker.
Without DATABASE_URL a Postgres of its own (pgserver's binaries, a temp dir). Logs and ledgers go
to bench/results/cluster-<time>/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, exit_on_signals, fmt, log, percentile, print_table  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from faultkit.cluster import ClusterSystem  # noqa: E402
from faultkit.cluster_run import ClusterReport, NodeDeath, leaders_die, run_cluster  # noqa: E402
from faultkit.load import Load  # noqa: E402
from faultkit.procs import Postgres, cleanup_all  # noqa: E402

from shared import wire  # noqa: E402

# cropcron's own ack_wait, not the fault suite's 3 s (shorter than a leader election: every run in
# flight at a death would run twice)
ENV = {"CROPCRON_ACK_WAIT": "30"}
os.environ.setdefault("CROPCRON_HTTP_PORT", "0")  # six service processes on one host: any free port each


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default="25,50", help="comma-separated N: interval jobs firing every second")
    p.add_argument("--seconds", type=float, default=20.0, help="the measured window (s)")
    p.add_argument("--job-seconds", type=float, default=0.2, help="how long each run takes")
    p.add_argument("--deaths", type=int, default=3, help="triggers-leader kills on R3 (0: none)")
    p.add_argument("--death-jobs", type=int, default=30, help="jobs/s while the leaders are killed")
    p.add_argument("--nats-sync", default="always", help="the nodes' sync_interval (default always, as shipped)")
    return p.parse_args()


def row(name: str, n: int, r: ClusterReport) -> list[Any]:
    rep = r.report
    return [name, n, fmt(rep.due / r.window_s), fmt(r.runs_per_second), fmt(percentile(r.late, 50), 2),
            fmt(percentile(r.late, 99), 2),
            len(rep.lost), rep.duplicate_effects]


async def measure(args: argparse.Namespace, admin: str, outdir: Path) -> dict[str, Any]:
    rows, raw, deaths = [], [], []

    async def idle(system: ClusterSystem) -> list[NodeDeath]:
        await asyncio.sleep(args.seconds)
        return []

    for n in [int(x) for x in args.jobs.split(",") if x.strip()]:
        for size, name in ((1, "R1 (one node)"), (3, "R3 (three nodes)")):
            workdir = outdir / f"{n}-R{size}"
            log(f"{name}, {n} jobs/s: {args.seconds:g} s")
            r = await run_cluster(Load(jobs=n, interval=1.0, job_seconds=args.job_seconds), workdir, admin, idle,
                                  warmup=3.0, env=ENV, size=size, sync=args.nats_sync)
            rows.append(row(name, n, r))
            raw.append({"name": name, "jobs": n, "summary": r.summary(), "phases": r.phases})
            log(r.summary().splitlines()[0])
            for bulky in ("nats-0", "nats-1", "nats-2"):
                shutil.rmtree(workdir / bulky, ignore_errors=True)
    if args.deaths:
        log(f"R3, {args.death_jobs} jobs/s: the triggers leader killed {args.deaths} times")
        kill = leaders_die(kills=(wire.STREAM_TRIGGERS,) * args.deaths, down=3.0, between=5.0)
        r = await run_cluster(Load(jobs=args.death_jobs, interval=1.0, job_seconds=args.job_seconds),
                              outdir / "deaths", admin, kill, warmup=3.0, env=ENV, sync=args.nats_sync)
        deaths = r.deaths
        raw.append({"name": "deaths", "jobs": args.death_jobs, "summary": r.summary()})
        log(r.summary())
        rows.append(row("R3 with deaths", args.death_jobs, r))
    return {"rows": rows, "raw": raw, "deaths": deaths}


def main() -> int:
    args = parse()
    exit_on_signals()
    atexit.register(cleanup_all)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    outdir = RESULTS_DIR / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}"
    outdir.mkdir(parents=True)
    own = None
    admin = os.environ.get("DATABASE_URL")
    try:
        if not admin:
            own = Postgres()
            own.init()
            own.start()
            admin = own.url
        result = asyncio.run(measure(args, admin, outdir))
    finally:
        if own is not None:
            own.cleanup()
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} cores, load average {load_avg} at the end; sync_interval {args.nats_sync}; "
          f"ack_wait 30 s; jobs of {args.job_seconds:g} s (a shell process each); `python bench/cluster.py "
          f"{' '.join(sys.argv[1:])}`\n")
    print_table(["system", "jobs/s", "due/s", "recorded/s", "late p50 (s)", "late p99 (s)", "lost",
                 "duplicate effects"], result["rows"])
    deaths: list[NodeDeath] = result["deaths"]
    if deaths:
        starts = [d.first_start_s for d in deaths if d.first_start_s is not None]
        recorded = [d.first_recorded_s for d in deaths if d.first_recorded_s is not None]
        print(f"\ntriggers leader killed {len(deaths)} times: death -> first job start "
              f"{', '.join(fmt(x, 1) for x in starts)} s (median {fmt(statistics.median(starts), 1) if starts else '-'}); "
              f"-> first success on record {', '.join(fmt(x, 1) for x in recorded)} s "
              f"(median {fmt(statistics.median(recorded), 1) if recorded else '-'})")
    (outdir / "cluster.json").write_text(json.dumps({"rows": result["rows"], "raw": result["raw"]}, indent=1,
                                                    default=str))
    log(f"raw results and logs: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
