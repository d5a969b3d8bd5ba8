"""`cropcron up` runs the dashboard: with port 8080 taken it still starts, on a free port it logs;
it generates the token into the data dir (mode 0600) without ever logging the token itself; and
`cropcron dashboard` alone without a token refuses to start with a clear message (exit 2)."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import ROOT, NatsProcess


def _hold_8080() -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 8080))
        sock.listen(1)
        return sock
    except OSError:
        sock.close()
        return None  # taken already: the case under test either way


def test_up_serves_the_dashboard_when_8080_is_taken(tmp_path: Path, up_data_dir: Path) -> None:
    data = up_data_dir  # (as root, the embedded Postgres's user must reach it: not under tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "DATABASE_URL") and not k.startswith("CROPCRON_DASHBOARD")}
    env["CROPCRON_DATA_DIR"] = str(data)
    held = _hold_8080()
    logfile = tmp_path / "up.log"
    with logfile.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", "examples/farm.yaml"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and url is None:
            assert up.poll() is None, logfile.read_text()
            match = re.search(r"dashboard: open (http://127\.0\.0\.1:(\d+)/)", logfile.read_text())
            url = match.group(1) if match else None
            time.sleep(0.3)
        assert url, "no dashboard URL logged within 60 s:\n" + logfile.read_text()
        assert not url.endswith(":8080/")
        assert "port 8080 on 127.0.0.1 is taken" in logfile.read_text()
        token_file = data / "dashboard-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert str(token_file) in logfile.read_text()
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("api/jobs").status_code == 401
            jobs = c.get("api/jobs", headers={"Authorization": f"Bearer {token}"})
            assert jobs.status_code == 200 and "edge_heartbeat" in {j["name"] for j in jobs.json()["jobs"]}
            # the dashboard's broker user may read the open flights (KV cropcron_batches) and ask history
            flights = c.get("api/flights", headers={"Authorization": f"Bearer {token}"})
            assert flights.status_code == 200 and flights.json()["open"] == [], flights.text
            page = c.get("flights", headers={"Authorization": f"Bearer {token}"})
            assert page.status_code == 200 and "open flights unavailable" not in page.text
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, logfile.read_text()
        assert token not in logfile.read_text(), "the token was logged"
    finally:
        if up.poll() is None:
            up.kill()
        if held is not None:
            held.close()


def test_dashboard_without_a_token_refuses_to_start(nats_server: NatsProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPCRON_DASHBOARD")}
    env["NATS_URL"] = nats_server.url
    out = subprocess.run([sys.executable, "-m", "cropcron", "dashboard"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "CROPCRON_DASHBOARD_TOKEN_FILE" in out.stderr and "Traceback" not in out.stderr
