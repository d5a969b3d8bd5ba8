"""The fault table of docs/reliability.md (issue 9 part 5, RELIABILITY §7): every component of
cropcron killed (SIGKILL), stalled (SIGSTOP for 30 s) and restarted (SIGTERM, start) under a steady
load, one scenario at a time, each on a fresh broker and database, then the three lists compared:
instants and files due, history rows, the jobs' ledger of effects.

    python bench/faults.py                              # all 27 scenarios, full settings (~30 min);
                                                        # rewrites the table in docs/reliability.md
    python bench/faults.py --only runner-kill,up-stop --no-write     # some of them
    python bench/faults.py --jobs 5 --stall 8 --down 3 --after 5     # the tests' lighter settings
    python bench/faults.py --report bench/results/faults-....json    # re-print an earlier run

Without DATABASE_URL the scenarios use a Postgres of their own (pgserver's binaries, a temp dir);
the postgres scenarios always do, since they kill it. Raw reports and every process's log go to
bench/results/faults-<time>/ (git-ignored). Exit status 1 if any row's verdict is not ok.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, exit_on_signals, log  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from faultkit.check import Report  # noqa: E402
from faultkit.load import Load  # noqa: E402
from faultkit.procs import Postgres, cleanup_all  # noqa: E402
from faultkit.scenario import ALL, Scenario, Timing, run  # noqa: E402
from faultkit.table import markdown, verdict  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated scenario names (e.g. runner-kill,broker-stop)")
    p.add_argument("--jobs", type=int, default=20, help="interval jobs (default 20)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between their instants")
    p.add_argument("--job-seconds", type=float, default=0.5, help="how long each run takes before its effect")
    p.add_argument("--files-per-second", type=float, default=2.0, help="file drops (watcher, dispatcher, up)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--stall", type=float, default=30.0, help="SIGSTOP .. SIGCONT (s)")
    p.add_argument("--down", type=float, default=5.0, help="SIGKILL .. start again (s)")
    p.add_argument("--after", type=float, default=10.0, help="load after the heal (s)")
    p.add_argument("--drain", type=float, default=180.0, help="deadline for everything due to be on record (s)")
    p.add_argument("--ack-wait", type=float, default=3.0,
                   help="CROPCRON_ACK_WAIT of every service (default 3, as the tests; cropcron's own default is 30)")
    p.add_argument("--no-write", action="store_true", help=f"print the table, leave {DOC.name} alone")
    p.add_argument("--report", help="re-print the table of an earlier run's JSON")
    return p.parse_args()


def chosen(only: str | None) -> list[Scenario]:
    if not only:
        return list(ALL)
    names = {s.name: s for s in ALL}
    wanted = [n.strip() for n in only.split(",") if n.strip()]  # a name may come twice: run twice
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(names)}")
    return [names[n] for n in wanted]


async def run_all(scenarios: list[Scenario], load: Load, timing: Timing, outdir: Path) -> list[tuple[Scenario, Report]]:
    results = []
    own: Postgres | None = None
    shared_url = os.environ.get("DATABASE_URL")
    try:
        for index, scenario in enumerate(scenarios):
            if own is None and (scenario.component == "postgres" or not shared_url):
                own = Postgres()
                await asyncio.to_thread(own.init)
                await asyncio.to_thread(own.start)
            use_own = scenario.component == "postgres" or not shared_url
            assert own is not None or not use_own
            workdir = outdir / f"{index:02d}-{scenario.name}"
            workdir.mkdir(parents=True)
            log(f"{scenario.name}: starting")
            report = await run(scenario, load, timing, workdir, own.url if use_own and own else str(shared_url),
                               own if use_own else None)
            results.append((scenario, report))
            (workdir / "report.json").write_text(json.dumps(report.as_dict(), indent=1))
            for bulky in ("nats", "data", "drops"):  # broker stores and dropped files; logs and ledger stay
                shutil.rmtree(workdir / bulky, ignore_errors=True)
            log(f"{scenario.name}: due {report.due}, run {report.run}, lost {len(report.lost)}, duplicate effects "
                f"{report.duplicate_effects} ({report.duration_s:.0f}s): {verdict(scenario, report)}")
    finally:
        if own is not None:
            await asyncio.to_thread(own.cleanup)
    return results


def header(load: Load, timing: Timing, began: float) -> str:
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(began))} on this machine "
            f"({os.cpu_count()} cores, load average {load_avg} at the end, shared with other work): "
            f"{load.jobs} jobs every {load.interval:g} s running {load.job_seconds:g} s each, "
            f"{load.files_per_second:g} files/s in the file scenarios; faults {timing.phase:g} s into an interval; "
            f"SIGKILL then start after {timing.down:g} s; SIGSTOP for {timing.stall:g} s; load for {timing.warmup:g} s "
            f"before and {timing.after:g} s after; ack_wait {timing.ack_wait:g} s. "
            f"`{' '.join(['python bench/faults.py', *sys.argv[1:]])}`")


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {START} ... {END} block to replace")
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> int:
    args = parse()
    if args.report:
        data = json.loads(Path(args.report).read_text())
        names = {s.name: s for s in ALL}
        results = [(names[r["scenario"]], Report(**r)) for r in data["reports"]]
        print(data["header"] + "\n\n" + markdown(results))
        return 0
    exit_on_signals()
    atexit.register(cleanup_all)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load = Load(args.jobs, args.interval, args.job_seconds, args.files_per_second)
    timing = Timing(warmup=args.warmup, stall=args.stall, down=args.down, after=args.after, drain=args.drain,
                    ack_wait=args.ack_wait)
    began = time.time()
    outdir = RESULTS_DIR / f"faults-{time.strftime('%Y%m%d-%H%M%S')}"
    outdir.mkdir(parents=True)
    results = asyncio.run(run_all(chosen(args.only), load, timing, outdir))
    text = header(load, timing, began) + "\n\n" + markdown(results)
    (outdir / "faults.json").write_text(json.dumps({"header": header(load, timing, began), "load": asdict(load),
                                                     "timing": asdict(timing),
                                                     "reports": [r.as_dict() for _, r in results]}, indent=1))
    print(text)
    log(f"raw reports and logs: {outdir}")
    if not args.no_write:
        write_doc(text)
        log(f"table written to {DOC}")
    return 0 if all(verdict(s, r).startswith("ok") for s, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
