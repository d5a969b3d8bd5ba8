"""`cropcron run JOB [--wait S]` as a script uses it: its exit code says what happened, and a job
that runs on arrived files is refused (it has no file to run on) instead of dying on {file.path}."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from conftest import ROOT, System, apply_yaml

from shared.bus import Bus


async def _cli(nats_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cropcron", *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_run_exit_codes_and_jobs_on_files_refused(system: System, bus: Bus, nats_server, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    await apply_yaml(bus, f"""
folder_watches:
  - {{name: drops, path: "{tmp_path / 'in'}"}}
jobs:
  - {{name: ok, type: data_cleanup, call: tests.jobs.calls:noop}}
  - {{name: broken, type: data_cleanup, max_retries: 1, retry_delay: 1s, retry_jitter: 0, run: ["false"]}}
  - {{name: slow, type: data_cleanup, run: ["sleep", "5"]}}
  - {{name: per_file, type: image_processing, on_file: drops, run: ["true", "--", "{{file.path}}"]}}
  - {{name: per_flight, type: batch_detection, on_batch: {{watch: drops, quiet: 1m}},
     run: ["true", "{{batch.manifest}}"]}}
""")
    await system.start("history", "runner")
    url = nats_server.url

    code, out, err = await _cli(url, "run", "ok", "--wait", "30", "--json")
    assert code == 0 and json.loads(out)["state"] == "succeeded", err
    code, out, _ = await _cli(url, "run", "ok")
    assert code == 0 and "queued" in out
    # a run that fails is not a success for the script waiting on it: after its retry, dead -> 1
    code, out, _ = await _cli(url, "run", "broken", "--wait", "30", "--json")
    assert code == 1 and json.loads(out)["state"] == "dead" and json.loads(out)["error"] == "exited with code 1"
    # still going when --wait runs out: not a success either
    code, out, _ = await _cli(url, "run", "slow", "--wait", "1")
    assert code == 1 and "still running" in out

    for job, watch in (("per_file", "drops"), ("per_flight", "drops")):
        code, out, err = await _cli(url, "run", job)
        assert code == 2 and out == "", err
        assert f"job {job!r} runs once per" in err and f"cropcron publish-file {watch}" in err, err
        assert "Traceback" not in err
