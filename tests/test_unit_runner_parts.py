"""Runner parts without a broker: retry delays, priority slots, argv rendering, running commands
(real subprocesses) and Python callables."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from cropcron.jobs import RunContext
from services.runner.backoff import retry_delay
from services.runner.execute import MAX_LINE, render_argv, run_callable, run_command
from services.runner.hold import InstantGates
from services.runner.slots import PrioritySlots
from shared.config import JobConfig
from shared.events import utcnow

ENV = dict(os.environ)


def _job(**fields: Any) -> JobConfig:
    return JobConfig.model_validate({"name": "j", "type": "data_cleanup", "run": ["true"], **fields})


# -- retry_delay --------------------------------------------------------------------------------------


def test_fixed_backoff() -> None:
    job = _job(backoff="fixed", retry_delay="30s", retry_jitter=0)
    assert [retry_delay(job, n) for n in range(1, 6)] == [30.0] * 5


def test_exponential_backoff_with_cap() -> None:
    job = _job(backoff="exponential", retry_delay="1m", retry_delay_max="10m", retry_jitter=0)
    assert [retry_delay(job, n) for n in range(1, 8)] == [60, 120, 240, 480, 600, 600, 600]


def test_fixed_backoff_is_capped_too() -> None:
    job = _job(backoff="fixed", retry_delay="2h", retry_delay_max="30m", retry_jitter=0)
    assert retry_delay(job, 1) == 1800


def test_exponential_backoff_at_the_highest_attempt_does_not_overflow() -> None:
    job = _job(backoff="exponential", retry_delay="1m", retry_delay_max="1h", retry_jitter=0.5, max_retries=50)
    delay = retry_delay(job, 51, random.Random(1))
    assert 1800 <= delay <= 5400


@pytest.mark.parametrize("backoff", ["fixed", "exponential"])
def test_jitter_bounds(backoff: str) -> None:
    jitter = 0.2
    job = _job(backoff=backoff, retry_delay="10s", retry_delay_max="1m", retry_jitter=jitter)
    rng = random.Random(1234)
    for attempt in range(1, 8):
        base = min(10.0 * (2 ** (attempt - 1) if backoff == "exponential" else 1), 60.0)
        delays = [retry_delay(job, attempt, rng) for _ in range(300)]
        assert all(base * (1 - jitter) <= d <= base * (1 + jitter) for d in delays), (attempt, min(delays),
                                                                                      max(delays))
        # really spread, over most of the range
        assert max(delays) - min(delays) > base * jitter
        assert len(set(delays)) > 250


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    job = _job(retry_delay="10s", retry_jitter=0.5)
    a = [retry_delay(job, n, random.Random(7)) for n in range(1, 5)]
    b = [retry_delay(job, n, random.Random(7)) for n in range(1, 5)]
    assert a == b


def test_full_jitter_never_negative() -> None:
    job = _job(backoff="fixed", retry_delay="1s", retry_jitter=1.0)
    rng = random.Random(3)
    delays = [retry_delay(job, 1, rng) for _ in range(1000)]
    assert min(delays) >= 0 and max(delays) <= 2.0 and min(delays) < 0.1


# -- PrioritySlots -------------------------------------------------------------------------------------


async def _settle() -> None:
    # let every ready task run until it blocks (yields to the loop; no wall-clock waiting)
    for _ in range(10):
        await asyncio.sleep(0)


async def test_slots_fast_path() -> None:
    slots = PrioritySlots(3)
    await slots.acquire("low")
    await slots.acquire("high")
    assert slots.free == 1 and slots.busy == 2 and not slots.waiting()
    slots.release()
    assert slots.free == 2


async def _queue(slots: PrioritySlots, granted: list[str], order: list[tuple[Any, str, bool]]) -> list[Any]:
    async def waiter(band: Any, tag: str, idle: bool) -> None:
        await slots.acquire(band, idle=idle)
        granted.append(tag)

    tasks = []
    for band, tag, idle in order:
        tasks.append(asyncio.create_task(waiter(band, tag, idle)))
        await _settle()  # queued in exactly this order
    return tasks


async def _release_one_by_one(slots: PrioritySlots, granted: list[str], count: int) -> None:
    for _ in range(count):
        before = len(granted)
        slots.release()
        await _settle()
        assert len(granted) == before + 1, "one release must grant exactly one waiter"
        assert slots.free == 0


async def test_high_band_is_granted_first_when_saturated() -> None:
    slots = PrioritySlots(2)
    await slots.acquire("normal")
    await slots.acquire("normal")
    granted: list[str] = []
    tasks = await _queue(slots, granted, [("low", "low1", False), ("normal", "normal1", False),
                                          ("high", "high1", False), ("low", "low2", False),
                                          ("high", "high2", False)])
    assert granted == [] and slots.free == 0 and slots.waiting()
    await _release_one_by_one(slots, granted, 5)
    # by band, first come first served within a band
    assert granted == ["high1", "high2", "normal1", "low1", "low2"]
    assert not slots.waiting()
    await asyncio.gather(*tasks)


async def test_new_arrival_does_not_pass_a_waiter_of_its_band() -> None:
    slots = PrioritySlots(1)
    await slots.acquire("normal")
    granted: list[str] = []
    tasks = await _queue(slots, granted, [("normal", "first", False)])
    slots.free += 1  # a slot shows up while `first` still waits (e.g. granted elsewhere, then returned)
    late = asyncio.create_task(slots.acquire("normal"))
    await _settle()
    assert not late.done(), "a later arrival took a slot ahead of an earlier waiter of the same band"
    slots.free -= 1
    slots.release()
    await _settle()
    assert granted == ["first"]
    slots.release()
    await _settle()
    assert late.done()
    await asyncio.gather(*tasks)


async def test_idle_waiters_queue_behind_bands_with_work_until_promoted() -> None:
    slots = PrioritySlots(1)
    await slots.acquire("low")
    granted: list[str] = []
    tasks = await _queue(slots, granted, [("high", "high-idle", True), ("low", "low-work", False),
                                          ("normal", "normal-idle", True)])
    await _release_one_by_one(slots, granted, 1)
    assert granted == ["low-work"]  # an idle high band does not take the slot from a band with work
    slots.promote("normal")  # normal has messages again: ahead of the still idle high band
    await _release_one_by_one(slots, granted, 2)
    assert granted == ["low-work", "normal-idle", "high-idle"]
    await asyncio.gather(*tasks)


async def test_idle_fetcher_gets_a_free_slot_when_nobody_waits() -> None:
    slots = PrioritySlots(1)
    task = asyncio.create_task(slots.acquire("high", idle=True))
    await _settle()
    assert task.done()  # a free slot and nobody ahead: even an idle fetcher gets it at once
    slots.release()
    assert slots.free == 1


async def test_take_more_does_not_take_slots_while_someone_waits() -> None:
    slots = PrioritySlots(4)
    assert slots.take_more(2) == 2
    await slots.acquire("normal")
    await slots.acquire("normal")
    assert slots.free == 0
    task = asyncio.create_task(slots.acquire("low"))
    await _settle()
    assert slots.waiting()
    slots.free += 1  # a slot appears without release(): a batch must still not take it
    assert slots.take_more(5) == 0, "a batch must not starve a waiting fetcher"
    slots.free -= 1
    slots.release()
    await _settle()
    assert task.done() and not slots.waiting()
    slots.release(2)
    assert slots.take_more(5) == 2 and slots.free == 0
    assert slots.take_more(5) == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = PrioritySlots(1)
    await slots.acquire("normal")
    task = asyncio.create_task(slots.acquire("high"))
    await _settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not slots.waiting()
    assert slots.take_more(1) == 0  # still full
    slots.release()
    assert slots.free == 1, "the released slot went to the cancelled waiter"
    await asyncio.wait_for(slots.acquire("low"), 5)  # not blocked by the cancelled high waiter
    assert slots.free == 0


async def test_waiter_cancelled_just_after_being_granted_hands_the_slot_on() -> None:
    slots = PrioritySlots(1)
    await slots.acquire("normal")
    first = asyncio.create_task(slots.acquire("high"))
    second = asyncio.create_task(slots.acquire("low"))
    await _settle()
    slots.release()  # grants `first` ...
    first.cancel()  # ... which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await _settle()
    assert second.done() and not second.cancelled(), "the slot granted to a cancelled waiter was lost"
    assert slots.free == 0
    slots.release()
    assert slots.free == 1 and slots.busy == 0


async def test_many_waiters_random_cancellations_keep_the_count() -> None:
    rng = random.Random(5)
    slots = PrioritySlots(3)
    for _ in range(3):
        await slots.acquire("normal")
    held = 3
    counted: set[int] = set()
    bands: list[Any] = ["high", "normal", "low"]
    tasks = [asyncio.create_task(slots.acquire(rng.choice(bands), idle=rng.random() < 0.3)) for _ in range(40)]
    await _settle()

    def count_grants() -> int:
        new = [t for t in tasks if t.done() and not t.cancelled() and id(t) not in counted]
        counted.update(id(t) for t in new)
        return len(new)

    for task in tasks:
        if rng.random() < 0.4:
            task.cancel()  # sometimes just after being granted, before it ran
        if rng.random() < 0.2:
            slots.promote(rng.choice(bands))
        if rng.random() < 0.6 and held:
            slots.release()
            held -= 1
        await _settle()
        held += count_grants()
        assert slots.busy == held and 0 <= slots.free <= slots.size
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    held += count_grants()
    assert slots.busy == held
    slots.release(held)
    assert slots.free == slots.size and not slots.waiting()


# -- render_argv -----------------------------------------------------------------------------------------

HOSTILE = [
    "two words",
    "it's \"quoted\"",
    "$(rm -rf /)",
    "`id`; echo pwned",
    "line1\nline2",
    "-rf",
    "--help",
    "* ? [a]",
    "a|b&c>d<e",
    "{run_id}",
    "{{",
    "",
    "ünïcødé ✓",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_render_argv_value_stays_one_argument(value: str) -> None:
    argv = render_argv(["prog", "--file", "{job}", "pre-{job}-post"], {"job": value, "run_id": "R"})
    assert argv == ["prog", "--file", value, f"pre-{value}-post"]


def test_render_argv_escapes_and_placeholders() -> None:
    values = {"run_id": "abc", "job": "j", "attempt": "2"}
    assert render_argv(["{{literal}}", "{{{run_id}}}", "x={attempt}"], values) == ["{literal}", "{abc}", "x=2"]
    assert render_argv(["no placeholders"], values) == ["no placeholders"]


@pytest.mark.parametrize("arg", ["{nope}", "{attempt:d}"])
def test_render_argv_error_names_the_argument(arg: str) -> None:
    with pytest.raises(ValueError) as info:
        render_argv(["prog", arg], {"attempt": "1", "job": "j"})
    assert repr(arg) in str(info.value)


async def test_rendered_hostile_values_reach_the_program_byte_exact(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("intact")
    values = [*HOSTILE, f"$(rm {canary})", f"; rm {canary}", f"`rm {canary}`"]
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    argv = [sys.executable, "-c", script]
    for index in range(len(values)):
        argv += [f"{{v{index}}}", f"--opt={{v{index}}}"]
    rendered = render_argv(argv, {f"v{i}": v for i, v in enumerate(values)})
    outcome = await run_command(rendered, str(tmp_path), ENV, 30, 1, 5)
    assert outcome.ok, outcome
    assert outcome.output_tail is not None
    expected = [x for v in values for x in (v, f"--opt={v}")]
    assert json.loads(outcome.output_tail) == expected
    assert canary.read_text() == "intact"


# -- run_command ------------------------------------------------------------------------------------------


async def test_command_exit_zero(tmp_path: Path) -> None:
    outcome = await run_command(["sh", "-c", "echo hello; echo err >&2"], str(tmp_path), ENV, 30, 1, 20)
    assert outcome.ok and outcome.exit_code == 0 and outcome.error is None and not outcome.timed_out
    assert outcome.output_tail == "hello\nerr"


async def test_command_exit_three(tmp_path: Path) -> None:
    outcome = await run_command(["sh", "-c", "echo failing; exit 3"], str(tmp_path), ENV, 30, 1, 20)
    assert not outcome.ok and outcome.exit_code == 3
    assert outcome.error == "exited with code 3" and outcome.output_tail == "failing"


async def test_command_killed_by_signal(tmp_path: Path) -> None:
    outcome = await run_command(["sh", "-c", "kill -9 $$"], str(tmp_path), ENV, 30, 1, 20)
    assert not outcome.ok and outcome.exit_code == -9 and outcome.error == "killed by signal 9"


@pytest.fixture
def real_tmp(tmp_path: Path) -> Path:
    return tmp_path.resolve()


async def test_command_cwd_and_env(real_tmp: Path) -> None:
    env = {**ENV, "CROPCRON_TEST_VALUE": "v 1"}
    outcome = await run_command(["sh", "-c", 'pwd -P; echo "$CROPCRON_TEST_VALUE"'], str(real_tmp), env, 30, 1, 5)
    assert outcome.output_tail == f"{real_tmp}\nv 1"


async def test_output_tail_keeps_only_the_last_lines(tmp_path: Path) -> None:
    argv = ["sh", "-c", "i=1; while [ $i -le 500 ]; do echo line$i; i=$((i+1)); done"]
    outcome = await run_command(argv, str(tmp_path), ENV, 30, 1, 3)
    assert outcome.ok and outcome.output_tail == "line498\nline499\nline500"
    quiet = await run_command(argv, str(tmp_path), ENV, 30, 1, 0)
    assert quiet.ok and quiet.output_tail is None


async def test_long_lines_are_cut(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.stdout.write('x' * 200000 + '\\nlast\\n')"]
    outcome = await run_command(argv, str(tmp_path), ENV, 30, 1, 5)
    assert outcome.ok and outcome.output_tail is not None
    lines = outcome.output_tail.split("\n")
    assert lines[-1] == "last" and all(len(line) <= MAX_LINE for line in lines)


async def test_program_not_found(tmp_path: Path) -> None:
    outcome = await run_command(["/nonexistent/cropcron-no-such-program"], str(tmp_path), ENV, 30, 1, 5)
    assert not outcome.ok and outcome.exit_code is None
    assert outcome.error is not None and outcome.error.startswith("program not found")
    assert "/nonexistent/cropcron-no-such-program" in outcome.error
    bare = await run_command(["cropcron-no-such-program-xyz", "--x"], str(tmp_path), ENV, 30, 1, 5)
    assert bare.error is not None and "program not found: 'cropcron-no-such-program-xyz'" in bare.error


async def test_program_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome = await run_command([str(script)], str(tmp_path), ENV, 30, 1, 5)
    assert not outcome.ok and outcome.error is not None and "not executable" in outcome.error


async def test_missing_cwd_is_not_reported_as_missing_program(tmp_path: Path) -> None:
    outcome = await run_command(["sh", "-c", "true"], str(tmp_path / "gone"), ENV, 30, 1, 5)
    assert not outcome.ok and outcome.error is not None
    assert "program not found" not in outcome.error
    assert "gone" in outcome.error


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """True once `pid` has exited (zombie or reaped), waiting on a pidfd rather than sleeping."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_timeout_kills_the_whole_process_group(tmp_path: Path, ignore_term: bool) -> None:
    pidfile = tmp_path / "child.pid"
    trap = "trap '' TERM; " if ignore_term else ""  # then only the SIGKILL after the grace period works
    argv = ["sh", "-c", f"{trap}sleep 60 & echo $! > {pidfile}; echo started; wait"]
    started = time.monotonic()
    outcome = await run_command(argv, str(tmp_path), ENV, 0.5, 0.3, 5)
    elapsed = time.monotonic() - started
    assert outcome.timed_out and not outcome.ok
    assert outcome.error is not None and "timed out after 0.5s" in outcome.error
    assert outcome.output_tail == "started"
    assert elapsed < 10
    child = int(pidfile.read_text())
    assert _wait_gone(child), f"child {child} survived the timeout"
    assert not _alive(child)


async def test_background_child_holding_stdout_does_not_hang(tmp_path: Path) -> None:
    # Python 3.11's Process.wait() returns only once every pipe is closed (unless the process had
    # already exited when wait() began): without care, such a job runs into its timeout.
    pidfile = tmp_path / "bg.pid"
    # the job starts a daemon-like child, works a little, and exits 0; the child keeps stdout open
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started; sleep 0.3"]
    started = time.monotonic()
    try:
        # run_command gives the output reader 2 s after the leader exits, then kills the group
        outcome = await run_command(argv, str(tmp_path), ENV, 3.5, 0.5, 5)
        elapsed = time.monotonic() - started
        assert outcome.output_tail == "started"
        assert not outcome.timed_out, f"reported as timed out after {elapsed:.1f}s"
        assert outcome.ok and outcome.exit_code == 0
        assert elapsed < 3.2
    finally:
        assert _wait_gone(int(pidfile.read_text())), "the background child was left running"


async def test_cancelled_while_its_pipes_connect_the_group_is_killed(tmp_path: Path) -> None:
    """The runner stopping just as a job starts: the process is forked, asyncio has not yet
    connected its pipes, and the cancellation lands there (it made the test below flaky under
    load: asyncio killed the leader alone and its child lived on)."""
    pidfile = tmp_path / "c.pid"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    task = asyncio.create_task(run_command(argv, str(tmp_path), ENV, 120, 1, 5))
    deadline = time.monotonic() + 10
    while not _forked(str(pidfile)):  # until the task has forked the job (not any other child)
        assert time.monotonic() < deadline, "the command was never forked"
        await asyncio.sleep(0)
    while not (pidfile.exists() and pidfile.read_text().strip()):  # the loop blocked: pipes not connected
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)  # noqa: ASYNC251 - blocking on purpose, so the cancel lands mid-spawn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # before the fix: stuck until the child closed the pipe
    assert _wait_gone(int(pidfile.read_text()), 10), "the job's child outlived the cancelled spawn"


def _forked(marker: str) -> bool:
    """A child of this process whose command line names `marker`: other tests in this process
    (or their fixtures) may leave children of their own."""
    for child in psutil.Process().children():
        try:
            if any(marker in arg for arg in child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


async def test_cancelling_a_command_kills_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "c.pid"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo ready; wait"]
    task = asyncio.create_task(run_command(argv, str(tmp_path), ENV, 120, 1, 5))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert loop.time() < deadline, "the command never started"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _wait_gone(int(pidfile.read_text()))


# -- run_callable ------------------------------------------------------------------------------------------

JOBS_SOURCE = '''
import asyncio
import sys
import threading
import time

RELEASE = threading.Event()
NOT_CALLABLE = 42


def ok(ctx):
    return {"run_id": ctx.run_id, "job": ctx.job, "attempt": ctx.attempt, "data": ctx.data}


async def async_ok(ctx):
    await asyncio.sleep(0)
    return [ctx.kind, ctx.attempt]


def fails(ctx):
    raise ValueError("disk full")


async def async_fails(ctx):
    raise RuntimeError("async boom")


def not_json(ctx):
    return {"when": object()}


def returns_set(ctx):
    return {1, 2}


def blocks(ctx):
    RELEASE.wait(30)
    return "late"


async def async_blocks(ctx):
    while not RELEASE.is_set():
        await asyncio.sleep(0.01)
    return "late"


def spin(ctx):
    end = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


async def async_spin(ctx):
    return spin(ctx)


def bye(ctx):
    sys.exit(3)
'''


@pytest.fixture(scope="module")
def jobs_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    directory = tmp_path_factory.mktemp("calljobs")
    name = f"cropcron_unit_jobs_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(JOBS_SOURCE)
    yield name, str(directory)
    module: ModuleType | None = sys.modules.get(name)
    if module is not None:
        module.RELEASE.set()


CTX = RunContext(run_id="r1", job="j", job_type="data_cleanup", attempt=2, kind="manual", scheduled_at=None,
                 data={"file": "a b.jpg"})


async def test_callable_sync(jobs_module: tuple[str, str]) -> None:
    name, cwd = jobs_module
    outcome = await run_callable(f"{name}:ok", CTX, 10, cwd)
    assert outcome.ok and outcome.error is None
    assert outcome.result == {"run_id": "r1", "job": "j", "attempt": 2, "data": {"file": "a b.jpg"}}


async def test_callable_async(jobs_module: tuple[str, str]) -> None:
    name, cwd = jobs_module
    outcome = await run_callable(f"{name}:async_ok", CTX, 10, cwd)
    assert outcome.ok and outcome.result == ["manual", 2]
    again = await run_callable(f"{name}:async_ok", CTX, 10, cwd)  # the thread's loop is reusable
    assert again.ok


@pytest.mark.parametrize(("func", "error"), [("fails", "ValueError: disk full"),
                                             ("async_fails", "RuntimeError: async boom")])
async def test_callable_raising(jobs_module: tuple[str, str], func: str, error: str) -> None:
    name, cwd = jobs_module
    outcome = await run_callable(f"{name}:{func}", CTX, 10, cwd)
    assert not outcome.ok and outcome.error == error and not outcome.timed_out


@pytest.mark.parametrize("func", ["not_json", "returns_set"])
async def test_callable_non_json_result(jobs_module: tuple[str, str], func: str) -> None:
    name, cwd = jobs_module
    outcome = await run_callable(f"{name}:{func}", CTX, 10, cwd)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith("result is not JSON-serialisable")


@pytest.mark.parametrize("target_suffix", ["does_not_exist", "NOT_CALLABLE"])
async def test_callable_cannot_load(jobs_module: tuple[str, str], target_suffix: str) -> None:
    name, cwd = jobs_module
    outcome = await run_callable(f"{name}:{target_suffix}", CTX, 10, cwd)
    assert not outcome.ok and outcome.error is not None and outcome.error.startswith(f"cannot load {name}:")
    missing = await run_callable("cropcron_no_such_module_xyz:f", CTX, 10, cwd)
    assert missing.error is not None and "ModuleNotFoundError" in missing.error


@pytest.mark.parametrize("func", ["blocks", "async_blocks"])
async def test_callable_timeout(jobs_module: tuple[str, str], func: str) -> None:
    name, cwd = jobs_module
    module = sys.modules.get(name)
    if module is not None:
        module.RELEASE.clear()
    started = time.monotonic()
    try:
        outcome = await run_callable(f"{name}:{func}", CTX, 0.3, cwd)
    finally:
        sys.modules[name].RELEASE.set()  # let the abandoned thread finish
    assert time.monotonic() - started < 5
    assert outcome.timed_out and not outcome.ok
    assert outcome.error == "timed out after 0.3s (thread abandoned)"


@pytest.mark.parametrize("func", ["spin", "async_spin"])
async def test_cpu_bound_callable_does_not_stall_the_loop(jobs_module: tuple[str, str], func: str) -> None:
    name, cwd = jobs_module
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        outcome = await run_callable(f"{name}:{func}", CTX, 30, cwd)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
    assert outcome.ok and isinstance(outcome.result, int) and outcome.result > 0
    assert elapsed >= 0.9
    assert ticks >= 30, f"the event loop ticked only {ticks} times during a {elapsed:.2f}s CPU-bound job"


async def test_callable_calling_sys_exit_is_a_failed_run(jobs_module: tuple[str, str]) -> None:
    name, cwd = jobs_module
    try:
        outcome = await run_callable(f"{name}:bye", CTX, 10, cwd)
    except SystemExit:
        pytest.fail("SystemExit escaped run_callable")
    assert not outcome.ok and outcome.error is not None and "SystemExit" in outcome.error


# -- holding early ticks: one gate per instant -------------------------------------------


async def test_every_run_held_for_an_instant_is_released_at_it_and_never_before() -> None:
    gates = InstantGates()
    instant = utcnow() + timedelta(milliseconds=80)
    released: list[Any] = []

    async def held() -> None:
        await gates.wait(instant)
        released.append(utcnow())

    waiters = [asyncio.create_task(held()) for _ in range(50)]
    quitter = asyncio.create_task(held())
    await asyncio.sleep(0.01)
    assert len(gates) == 1 and len(gates._openers) == 1  # one gate, one task watching the clock
    quitter.cancel()  # a run cancelled while held leaves the gate to the others
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert len(released) == 50 and min(released) >= instant
    assert len(gates) == 0  # opened gates are dropped
    await gates.wait(instant)  # an instant already past: no gate, no wait
    assert len(gates) == 0


async def test_closing_the_gates_never_releases_a_run_early() -> None:
    gates = InstantGates()
    waiter = asyncio.create_task(gates.wait(utcnow() + timedelta(seconds=30)))
    await asyncio.sleep(0.01)
    await gates.close()
    await asyncio.sleep(0.01)
    assert not waiter.done() and len(gates) == 0  # stopped watching, but not opened
    waiter.cancel()
