"""The system under test, started from scratch for each scenario: either every service as its own
process against a private nats-server (`Cluster`), or one `cropcron up` (`UpSystem`). Both give
the harness a bus to the live broker, the processes to hurt and a way to wait until a restarted
one is live again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cropcron.embedded import runtime_connection
from faultkit.load import Load, write_config
from faultkit.procs import FAST_ENV, ROOT, NatsServer, Postgres, Proc, Service, Up, service_env
from shared import wire
from shared.bus import Bus, connect
from shared.health import instance_key
from shared.nats_auth import Credentials

# components that have a peer which takes their work over by itself (two runners, two timers)
HAS_PEER = ("runner", "timer")


class System:
    def __init__(self, workdir: Path, load: Load, db_url: str, env: dict[str, str]) -> None:
        self.env = env  # settings for every cropcron process, over FAST_ENV (CROPCRON_ACK_WAIT ...)
        self.workdir = workdir
        self.load = load
        self.db_url = db_url
        self.ledger = workdir / "ledger"
        self.root = workdir / "drops"
        self.config = workdir / "cropcron.yaml"
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._bus: Bus | None = None
        self._bus_url = ""
        write_config(self.config, load, self.ledger, self.root)

    async def start(self) -> None:
        raise NotImplementedError

    def nats_url(self) -> str | None:
        raise NotImplementedError

    def credentials(self) -> Credentials | None:
        """Who the harness is on the broker (None: a broker without users)."""
        return None

    async def bus(self, timeout: float = 60) -> Bus:
        """A connection to the broker now running (reconnects by itself across a broker restart;
        re-opened when `up` came back on another port)."""
        deadline = time.monotonic() + timeout
        url = self.nats_url()
        while url is None:
            if time.monotonic() > deadline:
                raise AssertionError("no broker address (runtime.json) in time")
            await asyncio.sleep(0.1)
            url = self.nats_url()
        if self._bus is None or url != self._bus_url:
            if self._bus is not None:
                with contextlib.suppress(Exception):
                    await self._bus.close()
            self._bus = await asyncio.wait_for(connect(url, "faultkit", creds=self.credentials()), timeout)
            self._bus_url = url
        return self._bus

    async def victim(self, component: str) -> Proc:
        raise NotImplementedError

    async def wait_live(self, proc: Proc, timeout: float = 60) -> None:
        """Until the process's services all beat in KV under its current instance name."""
        services = self._services_of(proc)
        instance = getattr(proc, "instance", "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.proc.returncode if proc.proc else '?'}; "
                                     f"see {self.logdir}")
            if not services or await self._beating(services, instance):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{proc.name} ({instance}) not live within {timeout}s; see {self.logdir}")

    def _services_of(self, proc: Proc) -> list[str]:
        return []

    async def _beating(self, services: list[str], instance: str) -> bool:
        try:
            kv = await (await self.bus(5)).js.key_value(wire.KV_SERVICES)
            for service in services:
                entry = await kv.get(instance_key(service, instance))
                if not entry.value:
                    return False
        except Exception:
            return False
        return True

    async def role(self, service: str, instance: str) -> str | None:
        try:
            kv = await (await self.bus(5)).js.key_value(wire.KV_SERVICES)
            entry = await kv.get(instance_key(service, instance))
            beat = json.loads(entry.value or b"{}")
        except Exception:
            return None
        role = beat.get("role")
        return role if isinstance(role, str) else None

    async def quiet(self) -> bool:
        """Nothing undelivered or unacknowledged for the runners, history and dispatch."""
        js = (await self.bus(5)).js
        consumers = [(wire.STREAM_TRIGGERS, wire.runner_consumer(band)) for band in wire.BANDS]
        consumers += [(wire.STREAM_RUNS, wire.HISTORY_CONSUMER), (wire.STREAM_FILES, wire.DISPATCH_CONSUMER)]
        for stream, name in consumers:
            try:
                info = await js.consumer_info(stream, name)
            except Exception:
                return False
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    def processes(self) -> list[Proc]:
        raise NotImplementedError

    async def close(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.close()
        for proc in reversed(self.processes()):
            await asyncio.to_thread(proc.cleanup)


class Cluster(System):
    """Every service its own process, as compose runs them: history, notifier, two timers, two
    runners, and a watcher (detection + dispatch) or a lone dispatcher for the file scenarios."""

    def __init__(self, workdir: Path, load: Load, db_url: str, env: dict[str, str], postgres: Postgres | None,
                 files: str) -> None:
        super().__init__(workdir, load, db_url, env)
        self.nats = NatsServer(workdir / "nats")
        self.postgres = postgres
        self.files = files  # "" | "watcher" | "dispatcher"
        self.services: dict[str, Service] = {}

    def nats_url(self) -> str | None:
        return self.nats.url

    async def start(self) -> None:
        await asyncio.to_thread(self.nats.start)
        env = {**service_env(self.nats.url, self.db_url), **self.env}
        applied = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "cropcron", "apply", str(self.config)], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120)
        assert applied.returncode == 0, f"cropcron apply failed: {applied.stdout}{applied.stderr}"
        layout = {"history": ["history"], "notifier": ["notifier"], "timer-a": ["timer"], "timer-b": ["timer"],
                  "runner-a": ["runner"], "runner-b": ["runner"]}
        if self.files == "watcher":
            layout["watcher"] = ["watcher"]
            env = {**env, "CROPCRON_WATCHER_STATE_DIR": str(self.workdir / "watcher-state")}
        elif self.files == "dispatcher":
            layout["dispatcher"] = ["dispatcher"]
        for base, names in layout.items():
            self.services[base] = Service(names, base, env, self.logdir)
            self.services[base].start()
        for proc in self.services.values():
            await self.wait_live(proc, 90)

    def _services_of(self, proc: Proc) -> list[str]:
        if isinstance(proc, Service):
            return ["dispatcher" if n == "watcher" else n for n in proc.names] + (
                ["watcher"] if "watcher" in proc.names else [])
        return []

    async def victim(self, component: str) -> Proc:
        if component == "broker":
            return self.nats
        if component == "postgres":
            assert self.postgres is not None, "the postgres scenarios need a Postgres of their own"
            return self.postgres
        if component == "timer":  # the leader: hurting a standby proves nothing
            for base in ("timer-a", "timer-b"):
                if await self.role("timer", self.services[base].instance) == "leader":
                    return self.services[base]
            raise AssertionError("no timer is leading")
        if component == "runner":
            return self.services["runner-a"]
        return self.services[component]

    def processes(self) -> list[Proc]:
        return [self.nats, *self.services.values()]


class UpSystem(System):
    """One `cropcron up` (embedded nats-server, all services in one process), its own data dir."""

    def __init__(self, workdir: Path, load: Load, db_url: str, env: dict[str, str]) -> None:
        super().__init__(workdir, load, db_url, env)
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
        env.update(FAST_ENV, **self.env, DATABASE_URL=db_url, PYTHONPATH=str(ROOT))
        self.up = Up(self.config, workdir / "data", env, self.logdir)

    def nats_url(self) -> str | None:
        return self.up.nats_url()

    def credentials(self) -> Credentials | None:
        # `up` makes its broker's users; the harness reads KV and consumers as the operator does
        found = runtime_connection(self.up.data_dir)
        return found[1] if found else None

    async def start(self) -> None:
        self.up.start()
        await self.wait_live(self.up, 120)

    def _services_of(self, proc: Proc) -> list[str]:
        return ["timer", "runner", "history", "notifier", "watcher", "dispatcher"]

    async def victim(self, component: str) -> Proc:
        assert component == "up"
        return self.up

    def processes(self) -> list[Proc]:
        return [self.up]
