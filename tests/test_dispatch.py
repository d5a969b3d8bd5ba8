"""Dispatch of file arrivals: FileEvents (published as an upload tool would) -> on_file runs, on
real NATS, Postgres and files; the runner's re-check of every path inside the watch root."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import nats
from conftest import System, apply_yaml, fetch, wait_for
from dispatch_helpers import (
    dispatching,
    file_event,
    publish_events,
    receipts,
    recorder,
    rejections,
    wait_runs,
)

from shared import wire
from shared.bus import Bus
from shared.events import file_run_id


def _config(root: Path, script: Path, out: Path, jobs: str = "", mode: str = "touch") -> str:
    return f"""
folder_watches:
  - name: incoming
    path: "{root}"
jobs:
  - name: checksum
    type: image_processing
    on_file: incoming
    max_retries: 0
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "{mode}", "{{file.name}}", "{{file.size}}", "--", "{{file.path}}"]
{jobs}"""


async def test_plain_nats_client_event_triggers_job_and_escaping_paths_are_refused(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    (root / "flight1").mkdir(parents=True)
    canary = tmp_path / "canary.txt"
    canary.write_bytes(b"do not touch\n")
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out))
    await system.start("history", "runner")
    image = root / "flight1" / "IMG 0001.jpg"
    image.write_bytes(os.urandom(4096))
    (root / "flight1" / "escape.jpg").symlink_to(canary)

    # a plain nats-py client following docs/events.md "File arrivals": no cropcron imports
    def documented_event(rel: str) -> tuple[str, bytes]:
        info = os.lstat(os.path.join(root, rel))
        digest = hashlib.sha256(b"file\0incoming\0" + rel.encode() + b"\0")
        digest.update(f"{info.st_size}\0{info.st_mtime_ns}".encode())
        event_id = digest.hexdigest()[:32]
        body = {"schema_version": 1, "id": event_id, "watch": "incoming", "path": os.path.join(root, rel),
                "rel_path": rel, "size": info.st_size, "mtime_ns": info.st_mtime_ns,
                "detected_at": datetime.now(UTC).isoformat(), "source": "drone-uploader"}
        return event_id, json.dumps(body).encode()

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    good_id, good = documented_event("flight1/IMG 0001.jpg")
    link_id, link = documented_event("flight1/escape.jpg")
    traversal = json.loads(good)
    traversal.update(id="t" * 32, rel_path="../canary.txt")
    for event_id, payload in ((good_id, good), (link_id, link), ("t" * 32, json.dumps(traversal).encode())):
        await js.publish("cropcron.file.incoming", payload, headers={"Nats-Msg-Id": event_id})
    await nc.close()

    async with dispatching(nats_server.url):
        runs = await wait_runs(db_url, "checksum", 2, 60)
        by_id = {r["run_id"]: r for r in runs}
        good_run = by_id[file_run_id("checksum", good_id)]
        assert good_run["state"] == "succeeded", good_run
        receipt = receipts(out)[good_run["run_id"]]
        argv = [bytes.fromhex(a) for a in receipt["argv_hex"]]
        assert argv == [b"IMG 0001.jpg", b"4096", b"--", os.fsencode(image.resolve())]
        assert receipt["sha256"] == hashlib.sha256(image.read_bytes()[:4096]).hexdigest()
        assert bytes.fromhex(receipt["env"]["CROPCRON_FILE_REL_PATH"]) == b"flight1/IMG 0001.jpg"

        refused = by_id[file_run_id("checksum", link_id)]
        assert refused["state"] == "dead" and "symbolic link" in refused["reason"], refused
        assert file_run_id("checksum", link_id) not in receipts(out)

        rows = await wait_for(lambda: _rejections_count(db_url, 2), 30, "two rejections")
        reasons = " | ".join(r["reason"] for r in rows)
        assert "'..'" in reasons, reasons  # refused by the dispatcher: never became a trigger
        assert "symbolic link" in reasons, reasons  # refused by the runner, on its machine
    assert canary.read_bytes() == b"do not touch\n"


async def _rejections_count(db: str, n: int) -> list[dict] | None:
    rows = await rejections(db)
    return rows if len(rows) >= n else None


async def test_bad_events_are_rejected_and_the_dispatcher_keeps_going(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out))
    await system.start("history", "runner")
    (root / "a.jpg").write_bytes(b"a" * 10)
    good = file_event("incoming", root, b"a.jpg")
    wrong_subject = good.model_copy(update={"id": "w" * 32})
    unknown = good.model_copy(update={"id": "u" * 32, "watch": "nowhere"})
    absolute = good.model_copy(update={"id": "b" * 32, "rel_path": "/etc/passwd"})
    bad_b64 = good.model_copy(update={"id": "c" * 32, "rel_path_b64": "%%%"})
    async with dispatching(nats_server.url) as running:
        for subject, payload in ((wire.file_subject("incoming"), b"{not json"),
                                 (wire.file_subject("incoming"), b'{"id": "x"}'),
                                 (wire.file_subject("other"), wrong_subject.to_bytes()),
                                 (wire.file_subject("nowhere"), unknown.to_bytes()),
                                 (wire.file_subject("incoming"), absolute.to_bytes()),
                                 (wire.file_subject("incoming"), bad_b64.to_bytes())):
            await bus.js.publish(subject, payload)
        await publish_events(bus, [good])
        runs = await wait_runs(db_url, "checksum", 1, 60)
        assert [r["run_id"] for r in runs] == [file_run_id("checksum", good.id)]
        rows = await wait_for(lambda: _rejections_count(db_url, 6), 30, "six rejections")
        reasons = [r["reason"] for r in rows]
        assert any("malformed file event" in r for r in reasons), reasons
        assert any("arrived on subject 'cropcron.file.other'" in r for r in reasons), reasons
        assert any("unknown watch 'nowhere'" in r for r in reasons), reasons
        assert any("absolute" in r for r in reasons), reasons
        assert any("base64" in r for r in reasons), reasons
        assert all(r["source"] == "dispatch" for r in rows)
        assert running.dispatcher.stats["rejected"] == 6
        assert not running.task.done()


async def test_each_on_file_job_runs_once_per_file_version(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    script, out = recorder(tmp_path)
    second = f"""
  - name: thumbs
    type: image_processing
    on_file: incoming
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "--", "{{file.path}}"]
  - name: disabled_one
    type: image_processing
    on_file: incoming
    enabled: false
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "keep", "--", "{{file.path}}"]
"""
    await apply_yaml(bus, _config(root, script, out, second, mode="keep"))
    await system.start("history", "runner")
    events = []
    for i in range(20):
        (root / f"{i}.jpg").write_bytes(os.urandom(100 + i))
        events.append(file_event("incoming", root, f"{i}.jpg".encode()))
    async with dispatching(nats_server.url):
        await publish_events(bus, events)
        # the same arrivals announced again under other message ids (a rescan, a second tool)
        for e in events:
            await bus.js.publish(wire.file_subject("incoming"), e.to_bytes(), headers={wire.HEADER_MSG_ID: "again" + e.id})
        await wait_runs(db_url, "checksum", 20, 90)
        await wait_runs(db_url, "thumbs", 20, 90)

        async def settled() -> bool:
            return len(receipts(out)) >= 40

        await wait_for(settled, 30, "40 receipts")
        rows = await fetch(db_url, "SELECT job, run_id, state FROM runs")
        assert sorted(r["job"] for r in rows) == ["checksum"] * 20 + ["thumbs"] * 20
        assert {r["state"] for r in rows} == {"succeeded"}
        assert {r["run_id"] for r in rows} == {file_run_id(j, e.id) for j in ("checksum", "thumbs") for e in events}
        attempts = await fetch(db_url, "SELECT count(*) AS n FROM run_attempts")
        assert attempts[0]["n"] == 40, "no file ran twice"


async def test_file_resized_or_vanished_since_announced_is_refused_but_a_touch_still_runs(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out))
    await system.start("history", "runner")
    (root / "gone.jpg").write_bytes(b"x")
    (root / "grows.jpg").write_bytes(b"x")
    (root / "touched.jpg").write_bytes(b"same")
    os.mkfifo(root / "pipe.jpg")
    gone = file_event("incoming", root, b"gone.jpg")
    grows = file_event("incoming", root, b"grows.jpg")
    pipe = file_event("incoming", root, b"pipe.jpg")
    touched = file_event("incoming", root, b"touched.jpg")
    os.utime(root / "touched.jpg", ns=(touched.mtime_ns + 5 * 10**9, touched.mtime_ns + 5 * 10**9))
    (root / "gone.jpg").unlink()
    (root / "grows.jpg").write_bytes(b"x more")
    async with dispatching(nats_server.url):
        await publish_events(bus, [gone, grows, pipe, touched])
        runs = {r["run_id"]: r for r in await wait_runs(db_url, "checksum", 4, 60)}
    # an identical rewrite or touch changes only the mtime and is not announced again: it still runs
    assert runs.pop(file_run_id("checksum", touched.id))["state"] == "succeeded"
    assert "vanished" in runs[file_run_id("checksum", gone.id)]["reason"]
    assert "changed since it was announced" in runs[file_run_id("checksum", grows.id)]["reason"]
    assert "FIFO" in runs[file_run_id("checksum", pipe.id)]["reason"]
    assert all(r["state"] == "dead" and r["attempt"] == 1 for r in runs.values()), "a refusal is never retried"
    assert list(receipts(out)) == [file_run_id("checksum", touched.id)]


def test_rel_path_b64_round_trip_matches_the_documented_recipe() -> None:
    rel = b"flight\xff/IMG\n1.jpg"
    digest = hashlib.sha256(b"file\0w\0" + rel + b"\0" + b"5\x0042").hexdigest()[:32]
    from shared.events import file_event_id

    assert file_event_id("w", rel, 5, 42) == digest
    assert base64.b64decode(base64.b64encode(rel)) == rel


async def test_call_job_on_file_gets_the_checked_path_in_its_context(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    module = tmp_path / "file_calls_for_dispatch_test.py"
    module.write_text(
        "import hashlib, os\n"
        "def digest(ctx):\n"
        "    with open(os.fsencode(ctx.data['path']), 'rb') as f:\n"
        "        return {'sha256': hashlib.sha256(f.read()).hexdigest(), 'rel': ctx.data['rel_path'],"
        " 'kind': ctx.kind}\n")
    await apply_yaml(bus, f"""
folder_watches:
  - name: incoming
    path: "{root}"
jobs:
  - name: digest
    type: image_processing
    on_file: incoming
    cwd: "{tmp_path}"
    call: file_calls_for_dispatch_test:digest
""")
    await system.start("history", "runner")
    (root / "a b.tif").write_bytes(b"tiff" * 100)
    event = file_event("incoming", root, b"a b.tif")
    async with dispatching(nats_server.url):
        await publish_events(bus, [event])
        [run] = await wait_runs(db_url, "digest", 1, 60)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"sha256": hashlib.sha256(b"tiff" * 100).hexdigest(), "rel": "a b.tif", "kind": "file"}
