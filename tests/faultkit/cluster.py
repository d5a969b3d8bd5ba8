"""A three-node JetStream cluster on loopback (the pinned nats-server, a store and a client and a
route port each) and cropcron on it with every stream, consumer and bucket at three replicas
(issue 13). Services run as separate processes, each connected to a different node first
(NATS_URL lists all three, its own first), as docs/scale-out.md lays them out on three hosts.
Used by tests/test_cluster.py and bench/cluster.py; the nodes are killed by the PIDs started here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from conftest import quiet_port

from cropcron.embedded import nats_server_binary, wait_port, write_nats_config
from faultkit.load import Load
from faultkit.procs import ROOT, Proc, Service, service_env
from faultkit.systems import System
from shared.bus import Bus


class NatsNode(Proc):
    """One node, restarted on the same ports and store after a kill (so ports below the ephemeral
    range: nothing else can take them while it is down)."""

    def __init__(self, index: int, store: Path, routes: list[int], route: int, sync: str) -> None:
        super().__init__()
        self.index = index
        self.name = f"n{index}"  # its server_name: what stream info's cluster.leader says
        self.store = store
        self.port = quiet_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.route = route
        self.routes = routes
        self.sync = sync

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        conf = self.store / "nats.conf"
        write_nats_config(self.store / "js", self.port, conf, sync=self.sync, server_name=self.name,
                          cluster=(self.route, self.routes))
        log = open(self.store / "nats-server.log", "ab")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_listening(self, timeout: float = 15) -> None:
        wait_port(self.port, time.monotonic() + timeout, self.proc)


class NatsCluster:
    """`size` nodes (1: a lone server, no cluster block, for the R1 comparison)."""

    def __init__(self, workdir: Path, size: int = 3, sync: str = "always") -> None:
        routes = [quiet_port() for _ in range(size)] if size > 1 else []
        self.nodes = [NatsNode(i, workdir / f"nats-{i}", routes, routes[i] if routes else 0, sync)
                      for i in range(size)]
        if size == 1:
            self.nodes[0].routes = []

    def url(self, first: int = 0) -> str:
        """NATS_URL for a process on host `first`: every node, that one first."""
        n = len(self.nodes)
        return ",".join(self.nodes[(first + i) % n].url for i in range(n))

    def start(self) -> None:
        for node in self.nodes:  # all at once: each waits for the others' routes
            node.start()
        for node in self.nodes:
            node.wait_listening()

    def node(self, server_name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == server_name:
                return node
        raise AssertionError(f"no node named {server_name!r} (nodes: {[n.name for n in self.nodes]})")


async def leader_of(bus: Bus, stream: str, timeout: float = 30) -> str:
    """The server name of the node that leads `stream` (stream info's cluster.leader)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await bus.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream} has no leader after {timeout}s")
        await asyncio.sleep(0.1)


async def jetstream_ready(bus: Bus, timeout: float = 60) -> None:
    """Until the cluster has elected its meta leader and answers JetStream calls."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await bus.js.account_info()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class ClusterSystem(System):
    """cropcron on the cluster: history and the notifier on host 2, a timer and a runner on hosts
    0 and 1 (one timer leads), every process's NATS_URL its host's node first."""

    LAYOUT = {"timer-a": (["timer"], 0), "timer-b": (["timer"], 1), "runner-a": (["runner"], 0),
              "runner-b": (["runner"], 1), "history": (["history"], 2), "notifier": (["notifier"], 2)}

    def __init__(self, workdir: Path, load: Load, db_url: str, env: dict[str, str], size: int = 3,
                 sync: str = "always", layout: dict[str, tuple[list[str], int]] | None = None,
                 apply_replicas: int | None = None) -> None:
        super().__init__(workdir, load, db_url, env)
        self.cluster = NatsCluster(workdir, size, sync)
        self.replicas = min(size, 3)
        # `apply` makes the topology with this many; the services then change it to `replicas` at
        # their start (a deployment moving from one node to three)
        self.apply_replicas = apply_replicas or self.replicas
        self.layout = layout or self.LAYOUT
        self.services: dict[str, Service] = {}

    def nats_url(self) -> str | None:
        return self.cluster.url()

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)
        await jetstream_ready(await self.bus(60))
        base = {**service_env(self.cluster.url(), self.db_url), **self.env,
                "CROPCRON_REPLICAS": str(self.replicas)}
        applied = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "cropcron", "apply", str(self.config)],
            env={**base, "CROPCRON_REPLICAS": str(self.apply_replicas)}, cwd=ROOT,
            capture_output=True, text=True, timeout=120)
        assert applied.returncode == 0, f"cropcron apply failed: {applied.stdout}{applied.stderr}"
        for name, (names, host) in self.layout.items():
            env = {**base, "NATS_URL": self.cluster.url(host % len(self.cluster.nodes))}
            self.services[name] = Service(names, name, env, self.logdir)
            self.services[name].start()
        for proc in self.services.values():
            await self.wait_live(proc, 90)

    def _services_of(self, proc: Proc) -> list[str]:
        return list(proc.names) if isinstance(proc, Service) else []

    def processes(self) -> list[Proc]:
        return [*self.cluster.nodes, *self.services.values()]
