"""A data dir `cropcron up` cannot use is one clear line and exit 2, never a traceback (issue 9);
as root, a data dir the embedded Postgres's unprivileged user cannot reach is refused with the
directory in the way, and nothing's permissions are changed."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, reachable_temp_dir

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")
CONFIG = "jobs:\n  - {name: beat, type: data_cleanup, interval: 1m, call: tests.jobs.calls:noop}\n"


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory others may pass through, holding the config (readable by `nobody` too)."""
    path = reachable_temp_dir("cropcron-datadir-")
    (path / "farm.yaml").write_text(CONFIG)
    (path / "farm.yaml").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _up(place: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "CROPCRON_DATA_DIR")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "cropcron", "up", "--config", str(place / "farm.yaml"),
                           "--data-dir", str(data_dir)], env=env, capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line, after any log lines (a fresh machine logs that it created the
    Postgres user before refusing)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_data_dir_that_is_a_file(place: Path) -> None:
    (place / "file").write_text("")
    result = _up(place, place / "file")
    assert result.returncode == 2
    assert f"data dir {place / 'file'} exists and is not a directory" in _one_line(result)
    result = _up(place, place / "file" / "below")
    assert result.returncode == 2
    assert f"cannot create data dir {place / 'file' / 'below'}: Not a directory" in _one_line(result)


def test_a_data_dir_that_is_not_writable(place: Path) -> None:
    data = place / "data"
    data.mkdir(mode=0o755)
    if os.geteuid() == 0:
        # root writes through any mode bits, and `nobody` may not even reach this Python (under a
        # 0700 /root on a fresh machine): a read-only mount refuses root too
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"root cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
        reason = "Read-only file system"
    else:
        data.chmod(0o555)
        reason = "Permission denied"
    try:
        result = _up(place, data)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(data)], check=True)
    assert result.returncode == 2
    assert f"data dir {data} is not writable ({data / 'up.lock'}: {reason})" in _one_line(result)
    assert not (data / "up.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as another user")
def test_as_root_a_data_dir_postgres_cannot_reach_is_refused_untouched(place: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="cropcron-private-"))  # mode 0700, like /root
    try:
        result = _up(place, private / "data")
        assert result.returncode == 1, result.stderr
        line = _one_line(result)  # before anything started
        assert f"cannot enter {private} (mode 0700" in line and "--data-dir /var/lib/cropcron" in line, line
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # never chmod'ed
    finally:
        shutil.rmtree(private, ignore_errors=True)
