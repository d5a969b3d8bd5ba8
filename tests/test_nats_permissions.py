"""Least privilege on the broker of `cropcron up` (issue 10): every service connects as its own
user, and the boundaries hold against the real server: the uploader can announce a file (which
runs its job) and nothing else; the observer reads run events and publishes nothing; the runner
cannot rewrite job definitions; a job gets no broker credentials unless it names its user, and a
connection without them is refused; a wrong password or a missing password file is a clear error.
Denied operations are logged by the server and no service falls over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import broker_boundaries as boundaries
import pytest
from conftest import FAST_ENV, ROOT, reachable_temp_dir, wait_for

from shared.events import file_event_id, file_run_id
from shared.files import event_for

CONFIG = """\
system: {{timezone: UTC}}
folder_watches:
  - {{name: drops, path: "{drops}"}}
jobs:
  - {{name: pulse, type: data_cleanup, interval: 1s, catchup: skip, overlap: allow, call: tests.jobs.calls:noop}}
  - {{name: on_drop, type: image_processing, on_file: drops, run: ["true", "--", "{{file.path}}"]}}
  # tries the broker without credentials and records its environment
  - name: nosy
    type: data_cleanup
    run: ["{{python}}", "{probe}", "{out}/nosy.json", "{url_file}"]
  # names the user it runs as: it may announce files, with the credentials it is given
  - name: uploading
    type: data_cleanup
    nats_user: uploader
    run: ["{{python}}", "-m", "cropcron", "publish-file", "drops", "--", "{drops}/from-job.jpg"]
  # built-in chores: the runner asks history and writes to the notifier's outbox as itself
  - {{name: digest, type: report_generation, max_retries: 0, builtin: {{chore: digest, channels: [journal]}}}}
  - {{name: backup, type: database_backup, max_retries: 0,
      builtin: {{chore: backup_history, folder: "{out}/backups", keep: 1}}}}
notifications:
  channels: {{journal: {{type: log}}}}
"""

PROBE = """
import asyncio, json, os, sys
import nats
out, url_file = sys.argv[1], sys.argv[2]
url = open(url_file).read().strip()
async def main():
    try:
        nc = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=3)
        await nc.close()
        return "connected"
    except Exception as exc:
        return repr(exc)
result = asyncio.run(main())
json.dump({"connect": result, "env": sorted(os.environ)}, open(out, "w"))
"""


class Farm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.drops = root / "drops"
        self.drops.mkdir(parents=True)
        self.out = root / "out"
        self.out.mkdir()
        probe = root / "probe.py"
        probe.write_text(PROBE)
        self.url_file = root / "nats-url"
        config = root / "farm.yaml"
        config.write_text(CONFIG.format(drops=self.drops, probe=probe, out=self.out, url_file=self.url_file))
        self.env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
        self.env.update(FAST_ENV, CROPCRON_DATA_DIR=str(self.data), PYTHONPATH=str(ROOT))
        self.log = root / "up.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", str(config)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)

    def runtime(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.data / "runtime.json").read_text())
        return data

    @property
    def url(self) -> str:
        return str(self.runtime()["nats_url"])

    def password(self, user: str) -> str:
        return (self.data / "nats-users" / f"{user}.password").read_text().strip()

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cropcron", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    def server_log(self) -> str:
        return (self.data / "nats-server.log").read_text(errors="replace")

    def rows(self, job: str) -> list[dict[str, Any]]:
        out = self.cli("history", "--job", job, "--limit", "100", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else []


@pytest.fixture(scope="module")
def farm() -> Iterator[Farm]:
    root = reachable_temp_dir("cropcron-perm-")
    f = Farm(root)
    try:
        deadline = time.monotonic() + 90
        while not any(r["state"] == "succeeded" for r in f.rows("pulse")):
            assert f.proc.poll() is None, f.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no run of pulse within 90 s:\n" + f.log.read_text()[-3000:]
            time.sleep(0.5)
        f.url_file.write_text(f.url)
        yield f
    finally:
        f.proc.terminate()
        try:
            f.proc.wait(30)
        except subprocess.TimeoutExpired:
            f.proc.kill()
        subprocess.run(["rm", "-rf", str(root)], check=False)


async def test_the_uploader_announces_files_and_nothing_else(farm: Farm) -> None:
    image = farm.drops / "IMG_0001.jpg"
    image.write_bytes(b"\xff\xd8 a drone image")
    event = event_for("drops", str(farm.drops), b"IMG_0001.jpg", image.stat(), source="test-uploader")
    await boundaries.announce(farm.url, farm.password("uploader"), event)
    await boundaries.assert_denied(farm.url, "uploader", farm.password("uploader"), boundaries.FORBIDDEN)
    for subject in boundaries.FORBIDDEN:  # and the server logged each refusal, naming the user
        assert f'"$G/user:uploader" - Publish Violation - Subject "{subject}"' in farm.server_log()

    async def ran() -> list[dict[str, Any]]:
        return [r for r in await _finished(farm, "on_drop") if r["run_id"] == file_run_id("on_drop", event.id)
                and r["state"] == "succeeded"]

    await wait_for(ran, 60, "the run of the file the uploader announced")
    assert farm.proc.poll() is None


async def _finished(farm: Farm, job: str) -> list[dict[str, Any]]:
    return [r for r in farm.rows(job) if r["state"] in ("succeeded", "dead")]


async def test_the_observer_reads_run_events_and_publishes_nothing(farm: Farm) -> None:
    await boundaries.observer_reads_and_cannot_publish(farm.url, farm.password("observer"))


async def test_the_runner_cannot_write_job_definitions(farm: Farm) -> None:
    await boundaries.assert_denied(farm.url, "runner", farm.password("runner"),
                                   ("$KV.cropcron_jobs.pulse", "$JS.API.STREAM.DELETE.CROPCRON_RUNS"))
    jobs = farm.cli("jobs", "--json")
    assert jobs.returncode == 0 and "pulse" in [j["name"] for j in json.loads(jobs.stdout)]


async def test_jobs_get_no_credentials_unless_they_name_their_user(farm: Farm) -> None:
    assert farm.cli("run", "nosy", "--wait", "60").returncode == 0
    seen = json.loads((farm.out / "nosy.json").read_text())
    assert "Authorization Violation" in seen["connect"], seen["connect"]
    await boundaries.refused_without_credentials(farm.url)
    leaked = [k for k in seen["env"] if k.startswith(("CROPCRON_NATS", "NATS_", "CROPCRON_DASHBOARD", "PG"))
              or k in ("DATABASE_URL", "CROPCRON_SLACK_WEBHOOK")]
    assert leaked == [], leaked
    # a job that names its user gets that user's credentials, and may do what that user may
    (farm.drops / "from-job.jpg").write_bytes(b"\xff\xd8 announced by a job")
    out = farm.cli("run", "uploading", "--wait", "60", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "succeeded", out.stdout
    info = (farm.drops / "from-job.jpg").stat()
    event_id = file_event_id("drops", b"from-job.jpg", info.st_size, info.st_mtime_ns)

    async def ran() -> bool:
        return any(r["run_id"] == file_run_id("on_drop", event_id) and r["state"] == "succeeded"
                   for r in await _finished(farm, "on_drop"))

    await wait_for(ran, 60, "the run of the file the job announced")


def test_wrong_password_and_missing_password_file_are_named(farm: Farm, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    for env, text in (
        ({"CROPCRON_NATS_USER": "cli", "CROPCRON_NATS_PASSWORD_FILE": str(wrong)}, "refused user 'cli'"),
        ({"CROPCRON_NATS_USER": "cli", "CROPCRON_NATS_PASSWORD_FILE": str(tmp_path / "none")},
         f"NATS user 'cli': password file {tmp_path / 'none'} does not exist"),
        ({}, "refused a connection without credentials"),
    ):
        started = time.monotonic()
        out = farm.cli("jobs", env={"NATS_URL": farm.url, **env})
        assert out.returncode == 1, (env, out.stderr)
        assert text in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert time.monotonic() - started < 20
    assert farm.proc.poll() is None


def test_chores_run_within_the_runners_rights(farm: Farm) -> None:
    """Under `up`: the digest goes from the runner through history and the notifier's outbox to the
    log channel; the backup finds DATABASE_URL and the embedded server's pg_dump."""
    for job in ("digest", "backup"):
        out = farm.cli("run", job, "--wait", "60", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["state"] == "succeeded", (job, out.stdout)
    assert len(list((farm.out / "backups").glob("cropcron-history-*.dump"))) == 1
    deadline = time.monotonic() + 30
    while "[cropcron DIGEST] digest:" not in farm.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the digest was not delivered to the log channel"
        time.sleep(0.2)


def test_no_service_was_denied_anything(farm: Farm) -> None:
    """Only what the tests above provoked on purpose was denied: every service did all its work
    within its permissions."""
    provoked = ("user:uploader", "user:observer", 'user:runner" - Publish Violation - Subject "$KV.cropcron_jobs',
                'user:runner" - Publish Violation - Subject "$JS.API.STREAM.DELETE')
    denied = [line for line in farm.server_log().splitlines()
              if "Violation" in line and not any(p in line for p in provoked)]
    assert denied == [], denied[:5]
