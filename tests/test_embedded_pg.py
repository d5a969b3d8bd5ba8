"""The embedded Postgres of `cropcron up` (cropcron/embedded_pg.py): password auth only, its
password file private, no unix socket; a postmaster.pid naming a recycled PID does not block a
start; a cluster without a password file (one made by pgserver, which trusted everyone) gets a
new password and the old one stops working; as root, binaries its user cannot reach are used from
a copy in the data dir, and nothing is chmod'ed."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import reachable_temp_dir

from cropcron.child import EmbeddedError
from cropcron.embedded_pg import EmbeddedPostgres, binaries


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = reachable_temp_dir("cropcron-pgtest-")
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


async def _user(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


def _run_user(url: str) -> str:
    return asyncio.run(_user(url))


def _started(data_dir: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir)
    server.prepare()
    server.start(60)
    return server


def test_password_only_and_recovery_from_stale_state(data_dir: Path) -> None:
    # (sync: the child's parent-death signal follows the thread that spawned it, so no to_thread)
    data_dir.mkdir()
    server = _started(data_dir)
    try:
        assert _run_user(server.url) == "postgres"
        for wrong in (server.url.replace(server.password, "wrong"), server.url.replace(f":{server.password}", "")):
            with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
                _run_user(wrong)
        assert stat.S_IMODE((data_dir / "postgres-password").stat().st_mode) == 0o600
        assert not list((data_dir / "postgres").glob(".s.PGSQL.*")), "a unix socket"
        old = server.password
    finally:
        server.stop()

    # a postmaster.pid naming a live process of Postgres's user that is not a postmaster (a PID
    # recycled after a kill -9 and a reboot: Postgres itself would refuse to start), and no
    # password file (a cluster from before passwords): it starts, with a new password
    user = {"user": server.user.pw_uid, "group": server.user.pw_gid} if server.user else {}
    recycled = subprocess.Popen(["sleep", "60"], **user)  # type: ignore[call-overload]
    pidfile = data_dir / "postgres" / "postmaster.pid"
    pidfile.write_text(f"{recycled.pid}\n{data_dir / 'postgres'}\n0\n0\n\n\n\nready\n")
    (data_dir / "postgres-password").unlink()
    try:
        server = _started(data_dir)
    finally:
        recycled.kill()
        recycled.wait()
    try:
        assert server.password != old
        assert _run_user(server.url) == "postgres"
        with pytest.raises(asyncpg.InvalidPasswordError):
            _run_user(server.url.replace(server.password, old))
    finally:
        server.stop()


@pytest.fixture
def private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cropcron-private-"))  # mode 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as another user")
def test_binaries_out_of_the_postgres_users_reach_are_used_from_a_copy(data_dir: Path, private_dir: Path) -> None:
    # Python under a private /root: here the package's build (and the libraries its wheel ships
    # beside it), linked into a private dir
    package = binaries().parent.parent
    for name in (package.name, f"{package.name}.libs"):
        if (package.parent / name).exists():
            shutil.copytree(package.parent / name, private_dir / name, copy_function=os.link)
    data_dir.mkdir()
    server = EmbeddedPostgres(data_dir, bin_dir=private_dir / package.name / "pginstall" / "bin")
    server.prepare()
    server.start(60)
    try:
        assert server.bin_dir == data_dir / "pginstall" / package.name / "pginstall" / "bin"
        assert _run_user(server.url) == "postgres"
    finally:
        server.stop()
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700  # never chmod'ed


def test_without_the_pgserver_package_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)  # as if not installed (an extra, issue 10)
    with pytest.raises(EmbeddedError, match=r"pgserver is not installed: .*pip install .cropcron\[embedded\].*or set DATABASE_URL"):
        binaries()
