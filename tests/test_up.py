"""The README's run command on a fresh data dir: `cropcron up` spawns its own NATS and Postgres,
and `cropcron history` shows the example's frequent job within 30 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from conftest import ROOT


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cropcron", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_up_on_the_example_shows_runs_within_30s(tmp_path: Path, up_data_dir: Path) -> None:
    data = up_data_dir
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["CROPCRON_DATA_DIR"] = str(data)
    # the health/metrics port is taken (as 9464 may be): `up` takes a free one and says so
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    env["CROPCRON_HTTP_PORT"] = str(taken.getsockname()[1])
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", "examples/farm.yaml"], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    started = time.monotonic()
    try:
        rows: list[dict[str, object]] = []
        while time.monotonic() - started < 30 and not rows:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            out = _cli(["history", "--job", "edge_heartbeat", "--state", "succeeded", "--json"], env)
            if out.returncode == 0:
                rows = json.loads(out.stdout)
            time.sleep(0.5)
        assert rows, "no succeeded run of edge_heartbeat within 30 s:\n" + (tmp_path / "up.log").read_text()
        runtime = json.loads((data / "runtime.json").read_text())
        # port 4222 is taken on these machines (Debian's NATS): up must have picked another
        assert runtime["nats_url"].startswith("nats://127.0.0.1:")
        # the health/metrics endpoint (issue 10): in runtime.json and the log, and it counts the runs
        metrics = httpx.get(runtime["metrics_url"], timeout=5).text
        assert 'cropcron_runs_total{job="edge_heartbeat",state="succeeded"}' in metrics
        assert httpx.get(runtime["metrics_url"].replace("/metrics", "/healthz"), timeout=5).status_code == 200
        assert f"metrics on {runtime['metrics_url']}" in (tmp_path / "up.log").read_text()
        assert f":{env['CROPCRON_HTTP_PORT']}/" not in runtime["metrics_url"]
        assert f"port {env['CROPCRON_HTTP_PORT']} on 127.0.0.1 is taken" in (tmp_path / "up.log").read_text()
        jobs = _cli(["jobs", "--json"], env)
        assert jobs.returncode == 0 and len(json.loads(jobs.stdout)) == 14  # 12 scheduled (one by the sun, four chores) + 2 on drone uploads
        nats = [p for p in psutil.Process(up.pid).children(recursive=True) if "nats-server" in p.name()]
        assert nats, "no embedded nats-server"
        # Ctrl-C in a terminal signals the whole foreground process group, children included: the
        # broker must still outlive the services' shutdown, which must end cleanly and quickly
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(30) == 0
        output = (tmp_path / "up.log").read_text()
        assert "Traceback" not in output and "nats disconnected" not in output, output[-3000:]
        assert not (data / "runtime.json").exists()
        _, alive = psutil.wait_procs(nats, timeout=10)
        assert not alive, "the embedded nats-server outlived `cropcron up`"
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
        taken.close()


def test_up_runs_as_many_runner_processes_as_asked_and_stops_them(tmp_path: Path, up_data_dir: Path) -> None:
    """CROPCRON_RUNNER_PROCESSES=3 (issue 12): up runs its own runner and two `serve runner`
    processes, which log in as the runner user and share the work; all stop with Ctrl-C."""
    config = tmp_path / "tick.yaml"
    config.write_text('jobs:\n  - {name: tick, type: folder_monitoring, interval: 1s, overlap: allow,\n'
                      '     max_retries: 0, run: ["{python}", "-c", "import time; time.sleep(0.4)"]}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update(CROPCRON_DATA_DIR=str(up_data_dir), CROPCRON_HTTP_PORT="0", CROPCRON_RUNNER_PROCESSES="3",
               CROPCRON_CONCURRENCY="1")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", str(config)], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        runners: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(runners) < 2:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            out = _cli(["history", "--job", "tick", "--state", "succeeded", "--limit", "100", "--json"], env)
            if out.returncode == 0:
                runners = {str(r["runner"]) for r in json.loads(out.stdout)}
            time.sleep(0.5)
        assert len(runners) >= 2, f"runs by {runners} only:\n" + (tmp_path / "up.log").read_text()[-3000:]
        extra = [p for p in psutil.Process(up.pid).children() if p.cmdline()[-2:] == ["serve", "runner"]]
        assert len(extra) == 2, [p.cmdline() for p in psutil.Process(up.pid).children()]
        assert "starting it again" not in (tmp_path / "up.log").read_text(), "an extra runner died"
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(30) == 0
        _, alive = psutil.wait_procs(extra, timeout=15)
        assert not alive, "a runner process outlived `cropcron up`"
        assert "Traceback" not in (tmp_path / "up.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
