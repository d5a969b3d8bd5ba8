"""The compose image installs deploy/requirements.lock: every runtime dependency of pyproject.toml
must be in it (a dependency added without `python3 deploy/lock.py` breaks the image build, which
only the slow compose test would otherwise show)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_every_runtime_dependency_is_in_the_image_lock() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {_name(line) for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    missing = sorted({_name(d) for d in deps} - locked)
    assert not missing, f"not in deploy/requirements.lock (run `python3 deploy/lock.py`): {missing}"
