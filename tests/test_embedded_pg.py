"""The embedded Postgres of `cropcron up` (cropcron/embedded_pg.py): password auth only, its
password file private, no unix socket; a postmaster.pid naming a recycled PID does not block a
start; a cluster without a password file (one made by pgserver, which trusted everyone) gets a
new password and the old one stops working."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import reachable_temp_dir

from cropcron.embedded_pg import EmbeddedPostgres


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
