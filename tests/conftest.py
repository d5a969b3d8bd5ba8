"""Real servers for the tests: a nats-server per test (the pinned binary, free port, temp store),
Postgres from DATABASE_URL when set, else the embedded one of `cropcron up` (cropcron/embedded_pg.py),
with a fresh database per test.
Services run in-process (`system` fixture) or as separate processes the test can kill by PID
(`spawn` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from cropcron import commands
from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config
from cropcron.services import run_services
from services.runner.service import RunnerService
from shared.bus import Bus, connect
from shared.catalog import Catalog
from shared.config import parse_config
from shared.settings import BusSettings, ServiceSettings
from shared.topology import ensure_topology

ROOT = Path(__file__).resolve().parent.parent

# Every service process a test starts (in this process or spawned, inheriting the environment)
# puts its health/metrics endpoint on a free port: the fixed default would collide between them.
# A test that needs the URL finds it in the services' heartbeats ("metrics_url").
os.environ.setdefault("CROPCRON_HTTP_PORT", "0")

# Short timeouts so fault scenarios end in seconds (RELIABILITY §7.1 budget).
FAST_ENV = {
    "CROPCRON_ACK_WAIT": "3",
    "CROPCRON_HEARTBEAT_INTERVAL": "0.5",
    "CROPCRON_LEADER_TTL": "3",
    "CROPCRON_KILL_GRACE": "1",
    "CROPCRON_HTTP_PORT": "0",
    "CROPCRON_METRICS_INTERVAL": "1",
}


class NatsProcess:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.store / "nats.conf"
        write_nats_config(self.store / "js", self.port, conf)
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, time.monotonic() + 15, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from cropcron.embedded_pg import EmbeddedPostgres  # the embedded one when none is given

    data = reachable_temp_dir("cropcron-pg-")
    server = EmbeddedPostgres(data)
    try:
        server.prepare()
        server.start(60)
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def figure(request: pytest.FixtureRequest, line: str) -> None:
    """A figure a test measured (a timing, a count), shown in the run's summary, under xdist too
    (a worker's own output never reaches the terminal), and printed at once with -n 0 -s."""
    item = getattr(request, "_pyfuncitem", None) or request.node  # a module fixture's first test
    item.user_properties.append(("figure", line))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    seen: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, line in getattr(report, "user_properties", ()):
                if key == "figure" and line not in seen:
                    seen.append(line)
    if seen:
        terminalreporter.section("figures the tests measured")
        for line in seen:
            terminalreporter.write_line(line)


def quiet_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a listener that binds long
    after the pick (e.g. in a container after an image build): the kernel never hands such a
    port to another process's outgoing connection or bind(0) meanwhile, as it may an ephemeral
    one while the other xdist worker runs its tests."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 10000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def reachable_temp_dir(prefix: str) -> Path:
    """A temp dir other users may pass through (mode 0711): as root, the embedded Postgres runs as
    an unprivileged user, and pytest's tmp_path lies under a private /tmp/pytest-of-root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture
def up_data_dir() -> Iterator[Path]:
    """A data dir for a `cropcron up` the test starts (see reachable_temp_dir)."""
    path = reachable_temp_dir("cropcron-up-")
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def _with_db(url: str, dbname: str) -> str:
    # postgresql://user@host:port/db?host=/socket  ->  same with another db name
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{dbname}" + (f"?{query}" if query else "")


async def create_database(admin_url: str, prefix: str = "cc") -> str:
    """A new, empty database on the admin URL's server; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(admin_url, name)


async def drop_database(admin_url: str, db_url: str) -> None:
    """Drop create_database's database, whoever is still connected (never raises: a clean-up)."""
    name = db_url.partition("?")[0].rpartition("/")[2]
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def db_url(pg_admin_url: str) -> AsyncIterator[str]:
    url = await create_database(pg_admin_url)
    yield url
    await drop_database(pg_admin_url, url)


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(FAST_ENV)


@pytest.fixture
async def bus(nats_server: NatsProcess, fast_env: dict[str, str]) -> AsyncIterator[Bus]:
    b = await connect(nats_server.url, "test")
    await ensure_topology(b.js, BusSettings())
    yield b
    await b.close()


async def apply_yaml(bus: Bus, text: str, base_dir: Path | None = None) -> None:
    config = parse_config(yaml.safe_load(text))
    await commands.apply(bus, config, base_dir or ROOT)


@contextlib.asynccontextmanager
async def in_process_runner(bus: Bus, concurrency: int) -> AsyncIterator[RunnerService]:
    """A RunnerService running in this process on `bus` (for tests that look at its slots and
    stats), with its catalog; stopped and awaited on the way out."""
    catalog = Catalog(bus.js)
    await catalog.start()
    runner = RunnerService(bus, catalog, ServiceSettings(concurrency=concurrency))  # type: ignore[call-arg]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await catalog.stop()


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def fetch(db: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return list(await conn.fetch(sql, *args))
    except asyncpg.UndefinedTableError:
        return []  # history has not migrated yet
    finally:
        await conn.close()


class System:
    """Services running in this test's event loop."""

    def __init__(self, nats_url: str, db: str | None) -> None:
        self.nats_url = nats_url
        self.db = db
        self.runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, *names: str, **overrides: Any) -> asyncio.Event:
        env = {"NATS_URL": self.nats_url, "DATABASE_URL": self.db or "",
               "CROPCRON_INSTANCE": overrides.pop("instance", f"t-{uuid.uuid4().hex[:6]}")}
        env.update({f"CROPCRON_{k.upper()}": str(v) for k, v in overrides.items()})
        with _environ(env):
            settings = ServiceSettings()  # type: ignore[call-arg]
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(run_services(list(names), settings, stop, ready.set))
        self.runs.append((stop, task))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait([waiter, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        assert waiter in done, "services did not start within 30s"
        return stop

    async def stop_all(self) -> None:
        for stop, _ in self.runs:
            stop.set()
        for _, task in self.runs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def system(nats_server: NatsProcess, db_url: str, fast_env: dict[str, str]) -> AsyncIterator[System]:
    s = System(nats_server.url, db_url)
    yield s
    await s.stop_all()


class Spawner:
    """Services as separate processes, so a test can kill -9 them by the PIDs it started."""

    def __init__(self, nats_url: str, db: str | None, logdir: Path) -> None:
        self.nats_url = nats_url
        self.db = db
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *names: str, instance: str | None = None, **overrides: Any) -> subprocess.Popen[bytes]:
        instance = instance or f"p-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, **FAST_ENV, "NATS_URL": self.nats_url, "DATABASE_URL": self.db or "",
               "CROPCRON_INSTANCE": instance, "PYTHONPATH": str(ROOT)}
        env.update({f"CROPCRON_{k.upper()}": str(v) for k, v in overrides.items()})
        log = open(self.logdir / f"{'-'.join(names)}-{instance}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "cropcron", "serve", *names], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        proc.instance = instance  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def spawn(nats_server: NatsProcess, db_url: str, tmp_path: Path) -> Iterator[Spawner]:
    s = Spawner(nats_server.url, db_url, tmp_path)
    yield s
    s.stop_all()


async def wait_service(bus: Bus, service: str, instance: str, timeout: float = 30,
                       check: Callable[[dict[str, Any]], bool] | None = None, what: str = "heartbeat",
                       ) -> dict[str, Any]:
    """Until the instance's heartbeat is in KV (it is connected and its loops are running) and,
    given `check`, until its status satisfies it."""
    from shared import wire
    from shared.health import instance_key

    kv = await bus.js.key_value(wire.KV_SERVICES)

    async def probe() -> dict[str, Any] | None:
        try:
            entry = await kv.get(instance_key(service, instance))
        except Exception:
            return None
        beat = json.loads(entry.value) if entry.value else None
        return beat if beat is not None and (check is None or check(beat)) else None

    result: dict[str, Any] = await wait_for(probe, timeout, f"{service} {instance}: {what}")
    return result
