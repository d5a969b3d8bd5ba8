"""The issue's comparison in one run: for each N jobs firing every second, the backbone (timer ->
JetStream -> runner -> history -> Postgres, each service a process) beside the prototype's
pattern (APScheduler 3 BackgroundScheduler, 20 threads, one SQLite insert per run) and a Celery
peer (Celery 5: beat with N entries every 1 s -> Redis on 127.0.0.1:6379 -> a prefork worker of 2
processes -> one Postgres insert per run), measured one after the other on this machine, with the
same window and the same definitions.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python bench/run_all.py                       # 1, 100, 1,000, 10,000 jobs; 10 s windows (~10 min)
    python bench/run_all.py --sizes 1,100 --seconds 5   # a quick one
    python bench/run_all.py --rounds 3                  # medians of 3 rounds
    python bench/run_all.py --stages                    # also each stage alone (history, runner)
    python bench/run_all.py --skip-celery               # without the Celery peer (needs Redis on :6379)

Columns: lateness = start - scheduled instant (p50/p99/max, ms, over the runs that ran);
instants run = distinct (job, instant) recorded as run / (N x seconds); recorded/s = runs
committed to the store per second during the window (Postgres for the backbone and Celery, SQLite
for the prototype); RSS = resident memory of each process at the end of the window. Figures are printed,
never asserted. Raw results go to bench/results/run-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backbone  # noqa: E402
from common import BENCH_DIR, CHILDREN_TIMEOUT, RESULTS_DIR, ROOT, exit_on_signals, fmt, log, print_table  # noqa: E402

from cropcron.embedded import nats_server_binary  # noqa: E402


def _run_json(argv: list[str], grace: float) -> dict[str, Any]:
    """Run a measuring script and return the last JSON line it printed. Timed out or interrupted,
    it is ended by its PID: SIGTERM and `grace` seconds to stop its own children, then SIGKILL."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=CHILDREN_TIMEOUT)
    finally:
        if proc.poll() is None:
            if grace > 0:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{Path(argv[1]).name} failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_prototype(jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH_DIR / "prototype.py"), "--jobs", str(jobs), "--seconds", str(args.seconds),
            "--warmup", str(args.proto_warmup), "--json"]
    return _run_json(argv, grace=0)


def run_celery(jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    """bench/celery_peer.py in its own process (it starts beat and a worker, and stops them by PID
    however it ends: on a timeout here it gets SIGTERM first, SIGKILL only if it does not end)."""
    argv = [sys.executable, str(BENCH_DIR / "celery_peer.py"), "--jobs", str(jobs), "--seconds", str(args.seconds),
            "--warmup", str(args.warmup), "--drain-max", str(args.drain_max), "--redis-port", str(args.redis_port),
            "--redis-db", str(args.redis_db), "--json"]
    if args.database_url:
        argv += ["--database-url", args.database_url]
    return _run_json(argv, grace=30)  # time for it to stop its own children


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if isinstance(values[0], dict):
        keys = {k for v in values for k in v}
        return {k: _median([v.get(k) for v in values]) for k in sorted(keys)}
    if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
        median = statistics.median(values)
        return int(median) if all(isinstance(v, int) for v in values) and median == int(median) else median
    return values[-1]


def medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (N, system): the median of each figure over the rounds (each column on its own)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["jobs"], r["system"]), []).append(r)
    out = []
    order = {"backbone": 0, "prototype": 1, "celery": 2}
    for (jobs, system), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 3))):
        keys = {k for r in rows for k in r}
        out.append({k: _median([r.get(k) for r in rows]) for k in keys} | {"jobs": jobs, "system": system,
                                                                           "rounds": len(rows)})
    return out


PROTO_DETAIL = ["N", "missed (misfire)", "max_instances", "errors", "never reached", "cores; others",
                "CPU µs/run", "threads", "drain s"]


def proto_row(r: dict[str, Any]) -> list[str]:
    return [f"{r['jobs']:,}", f"{r['missed']:,.0f}", f"{r['max_instances']:,.0f}", f"{r['errors']:,.0f}",
            f"{r['never_reached']:,.0f}",
            f"{r['cpu_cores']:.2f}; " + (f"{r['cpu_others_cores']:.2f}" if r.get("cpu_others_cores") is not None else "-"),
            f"{1e6 * r['cpu_cores'] / r['recorded_per_s']:,.0f}" if r["recorded_per_s"] else "-", f"{r['threads']:.0f}", f"{r['drain_s']:.1f}"]


CELERY_DETAIL = ["N", "beat lag p50/p99 ms", "queue lag p50/p99 ms", "jobs seen", "queued at end / after drain",
                 "drain s", "cores: beat worker pool redis pg bench; others", "CPU µs/run: beat worker+pool redis pg"]


def celery_row(r: dict[str, Any]) -> list[str]:
    c = r["cpu_cores"]
    per_run = (" ".join(fmt(1e6 * v / r["recorded_per_s"], 0) for v in (c["beat"], c["worker"] + c["pool"], c["redis"],
                                                                         c["postgres"]))
               if r.get("recorded_per_s") else "-")
    return [fmt(r["jobs"]), f"{fmt(r['beat_lag_p50_ms'], 1)} / {fmt(r['beat_lag_p99_ms'], 1)}",
            f"{fmt(r['queue_lag_p50_ms'], 1)} / {fmt(r['queue_lag_p99_ms'], 1)}", fmt(r["jobs_seen"]),
            f"{fmt(r['queued_at_end'])} / {fmt(r['queued_after_drain'])}", fmt(r["drain_s"], 1),
            f"{c['beat']:.2f} {c['worker']:.2f} {c['pool']:.2f} {c['redis']:.2f} {c['postgres']:.2f} {c['bench']:.2f}; "
            f"{r['cpu_others_cores']:.2f}", per_run]


def describe_setup(args: argparse.Namespace) -> str:
    """What was measured, on what: enough to compare two runs of this script."""
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=BENCH_DIR.parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    snapshot = ROOT / ".commit"  # written when the snapshot was made
    if snapshot.exists():
        commit, dirty = snapshot.read_text().strip(), f" (snapshot in {ROOT})"
    else:
        commit = out(["git", "rev-parse", "--short", "HEAD"])
        dirty = " + uncommitted changes" if out(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    nats = out([nats_server_binary(), "--version"])
    return (f"code {commit}{dirty}; {os.cpu_count()} x {cpu}; Python {sys.version.split()[0]}; {nats}; "
            f"Postgres {'DATABASE_URL' if args.database_url else 'embedded'}; window {args.seconds} s after "
            f"{args.warmup} s warm-up; broker sync_interval {args.nats_sync}; tick lead {args.tick_lead:g} s; "
            f"{args.runners} runner process(es); {time.strftime('%Y-%m-%d %H:%M %Z')}")


def report(results: list[dict[str, Any]], stages: list[dict[str, Any]], rounds: int, setup: str) -> None:
    rows = medians(results)
    label = f"medians of {rounds} rounds" if rounds > 1 else "one round"
    print(f"\n## N jobs firing every second: backbone vs the prototype's pattern vs Celery ({label})\n")
    print(setup + "\n")
    print_table(backbone.HEADERS, [backbone.table_row(r) for r in rows])
    bb = [r for r in rows if r["system"] == "backbone"]
    if bb:
        print("\nBackbone, where the time goes (timer pub = the trigger of the first / last job of an instant "
              "reaching the broker; row lag = scheduled -> history row inserted; cores = CPU used during the "
              "window, per process; others = the rest of the machine):\n")
        print_table(backbone.DETAIL_HEADERS, [backbone.detail_row(r) for r in bb])
    proto = [r for r in rows if r["system"] == "prototype"]
    if proto:
        print("\nPrototype, runs not run in the window (of N x seconds):\n")
        print_table(PROTO_DETAIL, [proto_row(r) for r in proto])
    cel = [r for r in rows if r["system"] == "celery"]
    if cel:
        print("\nCelery (beat -> Redis -> prefork worker, 2 processes -> Postgres), where the time goes (beat lag = "
              "message published - due instant; queue lag = task start - published; jobs seen = beat entries with a "
              "run in the window):\n")
        print_table(CELERY_DETAIL, [celery_row(r) for r in cel])
    for s in stages:
        print("\nStage alone: " + json.dumps(s))


async def run_backbone(jobs: int, args: argparse.Namespace, pg: backbone.Postgres) -> dict[str, Any]:
    return await backbone.measure(jobs, args, pg)


def backbone_sync(jobs: int, args: argparse.Namespace, pg: backbone.Postgres) -> dict[str, Any]:
    return asyncio.run(run_backbone(jobs, args, pg))


def _attempt(results: list[dict[str, Any]], measure: Callable[[], dict[str, Any]]) -> None:
    """One measurement; a failure is reported and the rest of the run goes on."""
    try:
        results.append(measure())
    except Exception as exc:
        log(f"  FAILED: {exc!r}")
        return
    log(f"  {json.dumps(results[-1])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backbone.add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--proto-warmup", type=int, default=3)
    parser.add_argument("--skip-prototype", action="store_true")
    parser.add_argument("--skip-backbone", action="store_true")
    parser.add_argument("--skip-celery", action="store_true", help="no Celery peer (it needs Redis on 127.0.0.1)")
    parser.add_argument("--redis-port", type=int, default=6379, help="the Celery peer's Redis server on 127.0.0.1")
    parser.add_argument("--redis-db", type=int, default=14, help="the Redis database index it uses (flushed!)")
    parser.add_argument("--stages", action="store_true", help="also measure history and the runner alone")
    parser.add_argument("--report", metavar="RAW_JSON", help="only print the tables of an earlier run's raw results")
    parser.add_argument("--stage-events", type=int, default=60_000,
                        help="run events for history alone; a quarter as many triggers for the runner alone")
    args = parser.parse_args()
    if args.report:
        raw = json.loads(Path(args.report).read_text())
        report(raw["results"], raw["stages"], raw["args"]["rounds"], raw.get("setup", ""))
        return
    exit_on_signals()
    logging.getLogger("cropcron").setLevel(logging.ERROR)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS_DIR / f"run-{stamp}.json"
    setup = describe_setup(args)
    pg = backbone.Postgres(args.database_url)
    try:
        for round_no in range(1, args.rounds + 1):
            for jobs in sizes:
                if not args.skip_prototype:
                    log(f"round {round_no}: prototype, {jobs} jobs")
                    _attempt(results, functools.partial(run_prototype, jobs, args))
                if not args.skip_backbone:
                    log(f"round {round_no}: backbone, {jobs} jobs")
                    _attempt(results, functools.partial(backbone_sync, jobs, args, pg))
                if not args.skip_celery:
                    log(f"round {round_no}: celery, {jobs} jobs")
                    _attempt(results, functools.partial(run_celery, jobs, args))
                raw_path.write_text(json.dumps({"setup": setup, "args": vars(args), "results": results, "stages": stages}, indent=1))
        if args.stages:
            log("stage alone: history ingest")
            stages.append(asyncio.run(backbone.measure_ingest(args.stage_events, args, pg)))
            log("stage alone: runner")
            stages.append(asyncio.run(backbone.measure_runner_alone(args.stage_events // 4, args, pg)))
            raw_path.write_text(json.dumps({"setup": setup, "args": vars(args), "results": results, "stages": stages}, indent=1))
    finally:
        pg.close()
    report(results, stages, args.rounds, setup)
    print(f"\nraw results: {raw_path.relative_to(BENCH_DIR.parent)}")


if __name__ == "__main__":
    main()
