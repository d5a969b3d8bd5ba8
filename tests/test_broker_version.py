"""A NATS server cropcron cannot run on is refused at connect with its version, by the services and
by the CLI: Debian's nats-server 2.9 (too old: it silently ignored settings cropcron relies on) and
a current server with JetStream off. Both are real servers on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from cropcron.embedded import free_port, nats_server_binary, wait_port

DEBIAN_NATS = "/usr/sbin/nats-server"  # Debian's package (.ci/run installs it): 2.9.10


def _server(argv: list[str], port: int) -> Iterator[str]:
    proc = subprocess.Popen([*argv, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, time.monotonic() + 15, proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def old_nats(tmp_path: Path) -> Iterator[str]:
    assert Path(DEBIAN_NATS).exists(), "Debian's nats-server package is missing (.ci/run installs it)"
    yield from _server([DEBIAN_NATS, "-js", "-sd", str(tmp_path / "js")], free_port())


@pytest.fixture
def no_jetstream() -> Iterator[str]:
    yield from _server([nats_server_binary()], free_port())


def _cropcron(args: list[str], url: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": url, "PYTHONPATH": str(ROOT), "DATABASE_URL": ""}
    return subprocess.run([sys.executable, "-m", "cropcron", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_nats_2_9_is_refused_with_its_version(old_nats: str) -> None:
    for args in (["serve", "timer"], ["jobs"]):
        started = time.monotonic()
        out = _cropcron(args, old_nats)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert time.monotonic() - started < 20, "refused at once, not after retrying"
        assert f"the NATS server at {old_nats} is nats-server 2.9.10; cropcron needs 2.12 or newer" in out.stderr
        assert "Traceback" not in out.stderr


def test_a_server_without_jetstream_is_refused(no_jetstream: str) -> None:
    out = _cropcron(["serve", "runner"], no_jetstream)
    assert out.returncode == 1
    assert "has JetStream off; start it with -js" in out.stderr and "Traceback" not in out.stderr
