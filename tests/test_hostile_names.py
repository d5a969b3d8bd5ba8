"""Hostile file names (RELIABILITY §5.3, §7.2 item 29): a fixed corpus plus hypothesis-generated
names, announced as FileEvents and run by a real subprocess job. Expect zero shell invocations
(an audit hook in this process, where the runner runs, sees every process start), every name
reaching the job byte-exact as one argv element after `--`, or rejected with a reason, and a
canary file outside the root untouched."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from conftest import System, apply_yaml, fetch, wait_for
from dispatch_helpers import (
    dispatching,
    file_event,
    publish_events,
    receipts,
    recorder,
    rejections,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared import wire
from shared.bus import Bus
from shared.events import FileEvent, file_run_id

SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "pty.spawn")
_spawns: list[tuple[str, Any]] = []
_recording = [False]


def _audit(event: str, args: Any) -> None:
    if _recording[0] and event in SPAWN_EVENTS:
        _spawns.append((event, args))


sys.addaudithook(_audit)  # hooks cannot be removed: it records only while a test switches it on

FIXED: list[bytes] = [
    b"space name.jpg", b" leading space.jpg", b"trailing space.jpg ", b"new\nline.jpg", b"cr\rname.jpg",
    b"tab\tname.jpg", b"-rf", b"-", b"--", b"--output=pwned.jpg", b"--checkpoint-action=exec=sh x.jpg",
    b"quote'single.jpg", b'quote"double.jpg', b"$(touch pwned).jpg", b"`touch pwned`.jpg",
    b"semi;rm -rf ~;.jpg", b"pipe|cat.jpg", b"amp&bg.jpg", b"star*.jpg", b"glob?[a-z].jpg", b"back\\slash.jpg",
    b"\xff\xfe not utf-8.jpg", b"latin-1 caf\xe9.jpg", b"rtl \xe2\x80\xae gpj.exe", b"emoji \xf0\x9f\x9a\x81.jpg",
    b"{file.path}{run_id}.jpg", b"%s%n%x.jpg", b"...", b"..jpg", b"x" * 251 + b".jpg",
    b"sub dir/$(id)/deep -x.jpg", b"\xc0\xaf overlong slash.jpg",
]

names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..") and not b.startswith(b"."))
texty = st.text(alphabet=st.sampled_from(list(" \n\t'\"$()`;|&<>*?[]{}\\!#~-=%ü中\u202e")), min_size=1,
                max_size=30).map(str.encode).filter(lambda b: not b.startswith(b".") and b not in (b".", b".."))


def _config(root: Path, script: Path, out: Path) -> str:
    return f"""
folder_watches:
  - name: uploads
    path: "{root}"
    zero_byte: accept
jobs:
  - name: ingest
    type: image_processing
    on_file: uploads
    max_retries: 0
    overlap: allow
    run: ["{{python}}", "{script}", "{out}", "{{run_id}}", "touch", "{{file.name}}", "--", "{{file.path}}"]
"""


async def _rows_for(db: str, n: int) -> list[dict[str, Any]] | None:
    rows = await fetch(db, "SELECT run_id, state, reason FROM runs WHERE state IN ('succeeded', 'dead')")
    return [dict(r) for r in rows] if len(rows) >= n else None


def generated_names(count: int = 500) -> list[bytes]:
    """Names drawn by hypothesis (one draw of `count` distinct names; the system under test is
    started once for all of them, so hypothesis does not re-run the scenario per example)."""
    drawn: list[list[bytes]] = []

    @settings(max_examples=1, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(names, texty), min_size=count, max_size=count, unique=True))
    def draw(values: list[bytes]) -> None:
        drawn.append(values)

    draw()
    return drawn[0]


async def test_hostile_names_reach_the_job_byte_exact_or_are_rejected_and_no_shell_runs(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    generated = generated_names()
    root = tmp_path / "uploads"
    root.mkdir()
    canary = tmp_path / "canary.txt"
    canary.write_bytes(b"canary\n")
    script, out = recorder(tmp_path)
    await apply_yaml(bus, _config(root, script, out))
    await system.start("history", "runner", concurrency=8)

    accepted: dict[str, bytes] = {}  # run id -> rel path
    events: list[FileEvent] = []
    corpus = list(dict.fromkeys([*FIXED, *(b"gen-" + g for g in generated)]))
    for rel in corpus:
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:  # noqa: ASYNC230  (setup)
            f.write(rel)
        event = file_event("uploads", root, rel)
        events.append(event)
        accepted[file_run_id("ingest", event.id)] = rel
    # must be refused: links out of the root, special files, paths that leave it
    os.symlink(canary, root / "link.jpg")
    os.link(canary, root / "hardlink.jpg")
    os.mkfifo(root / "fifo.jpg")
    runner_refused = [file_event("uploads", root, rel) for rel in (b"link.jpg", b"hardlink.jpg", b"fifo.jpg")]
    os.symlink(tmp_path, root / "escape_dir")
    runner_refused.append(file_event("uploads", root, b"escape_dir/canary.txt"))
    template = events[0]
    dispatch_refused = [template.model_copy(update={"id": f"bad{i}", "rel_path": rel}) for i, rel in enumerate(
        ["../canary.txt", "/etc/passwd", "a/../../canary.txt", "./x", "a//..//canary.txt"])]

    _spawns.clear()
    _recording[0] = True
    try:
        async with dispatching(nats_server.url):
            await publish_events(bus, [*events, *runner_refused, *dispatch_refused])
            total = len(events) + len(runner_refused)
            rows = await wait_for(lambda: _rows_for(db_url, total), 600, f"{total} finished runs", every=1)
            await wait_for(lambda: _rejections_at_least(db_url, len(runner_refused) + len(dispatch_refused)), 60,
                           "every refusal recorded")
    finally:
        _recording[0] = False

    states = {r["run_id"]: r for r in rows}
    found = receipts(out)
    wrong = []
    for run_id, rel in accepted.items():
        row = states.get(run_id)
        if row is None or row["state"] != "succeeded" or run_id not in found:
            wrong.append((rel, row))
            continue
        argv = [bytes.fromhex(a) for a in found[run_id]["argv_hex"]]
        expected = os.path.join(os.fsencode(root.resolve()), rel)
        if argv != [os.path.basename(rel), b"--", expected]:
            wrong.append((rel, argv))
        if bytes.fromhex(found[run_id]["env"]["CROPCRON_FILE_REL_PATH"]) != rel:
            wrong.append((rel, "env"))
    assert not wrong, f"{len(wrong)} names did not arrive byte-exact: {wrong[:5]}"
    for event in runner_refused:
        row = states[file_run_id("ingest", event.id)]
        assert row["state"] == "dead" and row["reason"].startswith("refused: "), row
    reasons = [r["reason"] for r in await rejections(db_url)]
    assert any("symbolic link" in r for r in reasons) and any("hard links" in r for r in reasons), reasons
    assert any("FIFO" in r for r in reasons) and any("leaves the watch root" in r for r in reasons), reasons
    assert sum("'.' or '..'" in r or "absolute" in r for r in reasons) == len(dispatch_refused), reasons

    # zero shell invocations: every process started was the job's own argv, a list, python first
    assert len(_spawns) >= len(accepted)
    for event, args in _spawns:
        assert event == "subprocess.Popen", (event, args)
        executable, argv = args[0], args[1]
        assert isinstance(argv, (list, tuple)), argv
        assert os.path.basename(os.fsdecode(executable or argv[0])) not in ("sh", "bash", "dash", "zsh")
        assert list(argv[:2]) == [sys.executable, str(script)], argv[:3]
    assert canary.read_bytes() == b"canary\n"
    assert not [p for p in [*tmp_path.rglob("pwned*"), *Path.cwd().glob("pwned*")]  # noqa: ASYNC240
                if p.parent != root], "a name was executed"
    assert wire.file_subject("uploads") == "cropcron.file.uploads"


async def _rejections_at_least(db: str, n: int) -> list[dict[str, Any]] | None:
    rows = await rejections(db)
    return rows if len(rows) >= n else None
