"""`cropcron publish-file WATCH PATH...` as a script would run it: a real process against real
NATS; its events trigger the watch's on_file job; paths outside the root are refused (exit 2)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from conftest import ROOT, System, apply_yaml
from dispatch_helpers import dispatching, receipts, recorder, wait_runs

from shared.bus import Bus
from shared.events import file_event_id, file_run_id


async def _cli(nats_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cropcron", *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_publish_file_triggers_the_job_and_refuses_paths_outside_the_root(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    (root / "f1").mkdir(parents=True)
    script, out = recorder(tmp_path)
    await apply_yaml(bus, f"""
folder_watches:
  - name: incoming
    path: "{root}"
jobs:
  - name: checksum
    type: image_processing
    on_file: incoming
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "--", "{{file.path}}"]
""")
    await system.start("history", "runner")
    image = root / "f1" / "-rf.jpg"
    image.write_bytes(b"\x89PNG" * 100)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    (root / "link.jpg").symlink_to(outside)

    async with dispatching(nats_server.url):
        code, stdout, stderr = await _cli(nats_server.url, "publish-file", "--json", "incoming", "--", str(image))
        assert code == 0, stderr
        [event] = json.loads(stdout)
        info = image.stat()
        assert event["id"] == file_event_id("incoming", b"f1/-rf.jpg", info.st_size, info.st_mtime_ns)
        assert event["rel_path"] == "f1/-rf.jpg" and event["source"] == "publish-file"
        [run] = await wait_runs(db_url, "checksum", 1, 60)
        assert run["run_id"] == file_run_id("checksum", event["id"]) and run["state"] == "succeeded"
        assert bytes.fromhex(receipts(out)[run["run_id"]]["argv_hex"][-1]) == os.fsencode(image.resolve())

        for bad, why in ((str(outside), "not inside the watch root"), (str(root / "link.jpg"), "symbolic link"),
                         (str(root / "f1"), "not a regular file"), (str(root / "nope.jpg"), "no longer exists"),
                         (f"{root}/../outside.jpg", "not inside the watch root")):
            code, stdout, stderr = await _cli(nats_server.url, "publish-file", "incoming", str(image), bad)
            assert code == 2, (bad, stderr)
            assert "nothing published" in stderr and why in stderr, stderr
            assert stdout == ""
        code, _, stderr = await _cli(nats_server.url, "publish-file", "nowhere", str(image))
        assert code == 2 and "unknown watch 'nowhere'" in stderr and "incoming" in stderr, stderr
        await asyncio.sleep(2)  # a refused command published nothing: still one run
        assert len(await wait_runs(db_url, "checksum", 1, 5)) == 1
