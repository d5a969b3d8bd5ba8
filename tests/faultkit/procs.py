"""The processes a fault scenario starts and hurts: a nats-server, a Postgres, cropcron services
(`python -m cropcron serve NAME`) and a whole `cropcron up`. Each one can be killed (SIGKILL),
stalled (SIGSTOP, then SIGCONT), stopped cleanly and started again, always by the PIDs this
harness started (or their descendants); nothing is found by name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from conftest import quiet_port

from cropcron.embedded import nats_server_binary, wait_port, write_nats_config
from cropcron.embedded_pg import binaries, reachable_install, system_user

ROOT = Path(__file__).resolve().parent.parent.parent

# Short timeouts so a fault is noticed in seconds (RELIABILITY §7.1 budget); as tests/conftest.py.
FAST_ENV = {
    "CROPCRON_ACK_WAIT": "3",
    "CROPCRON_HEARTBEAT_INTERVAL": "0.5",
    "CROPCRON_LEADER_TTL": "3",
    "CROPCRON_KILL_GRACE": "1",
    "CROPCRON_DISPATCH_LEADER_TTL": "2",
    "CROPCRON_DISPATCH_BATCH_CHECK": "0.2",
    "CROPCRON_DISPATCH_FETCH_TIMEOUT": "0.5",
    "CROPCRON_WATCHER_SETTLE_CHECK": "0.2",
    "CROPCRON_WATCHER_ROOT_RETRY": "0.3",
}


_MADE: list[Proc] = []


def cleanup_all() -> None:
    """Every process any Proc started, stopped (for atexit in a script that may be interrupted)."""
    for proc in reversed(_MADE):
        with contextlib.suppress(Exception):
            proc.cleanup()


class Proc:
    """One restartable process. `pause()` stops the process itself (not its children: a frozen
    runner's jobs run on, as they would under a real stall of the runner)."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused: list[psutil.Process] = []
        _MADE.append(self)

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        """What a stall freezes: the process alone (see Postgres for a whole tree)."""
        return [psutil.Process(self.pid)]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)

    def pause(self) -> None:
        self._paused = self.tree()
        for p in self._paused:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for p in self._paused:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)
        self._paused = []

    def terminate(self, timeout: float = 30) -> None:
        """A clean stop: SIGTERM, and the process must exit within `timeout`."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)

    def cleanup(self) -> None:
        """End of the scenario: whatever state it is in, nothing is left running."""
        self.resume()
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NatsServer(Proc):
    """The pinned nats-server on a free loopback port with its own store; restarted on the same
    port and store (sync_interval always, as `cropcron up` runs it)."""

    name = "broker"

    def __init__(self, store: Path) -> None:
        super().__init__()
        self.store = store
        self.port = quiet_port()  # restarted on it after a kill: never an ephemeral port
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        conf = self.store / "nats.conf"
        write_nats_config(self.store / "js", self.port, conf, sync="always")
        log = open(self.store / "nats-server.log", "ab")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port, time.monotonic() + 15, self.proc)


class Postgres(Proc):
    """A Postgres of our own (pgserver's binaries), so that it can be killed: the machine's shared
    one, or the session's, must not be. As root it runs as the user `cropcron up` runs its
    Postgres as (Postgres refuses root). A stall freezes the postmaster and every backend: the
    postmaster alone only refuses new connections while open ones go on working."""

    name = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="cropcron-faultpg-"))  # under /tmp: the user can reach it
        self.data = self.dir / "data"
        self.port = quiet_port()  # restarted on it after a kill: never an ephemeral port
        self.user: str | None = None
        if os.geteuid() == 0:
            entry = system_user(self.data)
            assert entry is not None  # root always gets one
            self.user = entry.pw_name
            # on a fresh machine the binaries sit under a private /root: `up`'s copy, not a chmod
            self.bin = reachable_install(self.bin, self.dir, entry)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._children: list[psutil.Process] = []

    def init(self) -> None:
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--encoding=utf8", "-N"], user=self.user, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._wait_children_gone()
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), "-c", "max_connections=200"],
            user=self.user, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                                   check=False)
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start; see {self.dir / 'postgres.log'}")
            time.sleep(0.1)

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def kill(self) -> None:
        # the backends outlive a killed postmaster for a moment; a new one cannot start over them
        self._children = psutil.Process(self.pid).children(recursive=True)
        super().kill()

    def terminate(self, timeout: float = 30) -> None:
        # SIGINT is Postgres' "fast" shutdown; SIGTERM ("smart") waits for every client to leave,
        # and history's pool never leaves
        if self.alive():
            assert self.proc is not None
            self._children = psutil.Process(self.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout)

    def _wait_children_gone(self) -> None:
        _, alive = psutil.wait_procs(self._children, timeout=15)
        for p in alive:  # backends of our own postmaster that did not notice it died
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self._children = []

    def cleanup(self) -> None:
        self.resume()
        if self.alive():
            with contextlib.suppress(Exception):
                self.terminate(30)
        if self.alive():
            super().cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


class Service(Proc):
    """`python -m cropcron serve NAMES...` of this checkout. Every start gets a new instance name
    (`<base>-<n>`), so its first heartbeat tells that the new process is live."""

    def __init__(self, names: list[str], base: str, env: dict[str, str], logdir: Path) -> None:
        super().__init__()
        self.names = names
        self.name = base
        self.base = base
        self.env = env
        self.logdir = logdir
        self.generation = 0
        self.instance = ""

    def start(self) -> None:
        self.generation += 1
        self.instance = f"{self.base}-{self.generation}"
        env = {**self.env, "CROPCRON_INSTANCE": self.instance}
        log = open(self.logdir / f"{self.base}.log", "ab")  # noqa: SIM115 - the child writes it
        log.write(f"---- start {self.instance} at {time.time():.3f}\n".encode())
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "cropcron", "serve", *self.names], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()


class Up(Proc):
    """A whole `cropcron up` with its own data dir: embedded nats-server (its child, on a port it
    picks), every service in one process. History goes to the harness's database (DATABASE_URL),
    so the checker can read it whatever state `up` is in."""

    name = "up"

    def __init__(self, config: Path, data_dir: Path, env: dict[str, str], logdir: Path) -> None:
        super().__init__()
        self.config = config
        self.data_dir = data_dir
        self.env = env
        self.logdir = logdir
        self.generation = 0
        self.instance = ""
        self._brokers: list[psutil.Process] = []

    def start(self) -> None:
        self._wait_brokers_gone()
        self.generation += 1
        self.instance = f"up-{self.generation}"
        env = {**self.env, "CROPCRON_INSTANCE": self.instance, "CROPCRON_DATA_DIR": str(self.data_dir),
               "CROPCRON_DASHBOARD_PORT": str(quiet_port())}
        log = open(self.logdir / "up.log", "ab")  # noqa: SIM115 - the child writes it
        log.write(f"---- start {self.instance} at {time.time():.3f}\n".encode())
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", str(self.config)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    def nats_url(self) -> str | None:
        """The broker of the `up` now running (its port changes at each start)."""
        try:
            runtime = json.loads((self.data_dir / "runtime.json").read_text())
        except (OSError, ValueError):
            return None
        if runtime.get("pid") != (self.proc.pid if self.proc else None):
            return None
        url = runtime.get("nats_url")
        return url if isinstance(url, str) else None

    def _children_brokers(self) -> list[psutil.Process]:
        try:
            return [p for p in psutil.Process(self.pid).children() if "nats-server" in p.name()]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        # its nats-server gets SIGTERM when `up` dies (PR_SET_PDEATHSIG); the next start must wait
        # for it to let go of the store
        self._brokers = self._children_brokers()
        super().kill()

    def terminate(self, timeout: float = 30) -> None:
        self._brokers = self._children_brokers()
        super().terminate(timeout)

    def _wait_brokers_gone(self) -> None:
        _, alive = psutil.wait_procs(self._brokers, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self._brokers = []

    def cleanup(self) -> None:
        self._brokers = self._children_brokers() if self.alive() else self._brokers
        super().cleanup()
        self._wait_brokers_gone()


def service_env(nats_url: str, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    return {**env, **FAST_ENV, "NATS_URL": nats_url, "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}

