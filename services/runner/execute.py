"""Running one attempt of a job: a command (argv, never a shell) or a Python callable.

Commands run in their own process group (start_new_session), so a timeout kills the job and
every child it started. Output is read as it comes and only the last lines are kept, so a chatty
job cannot exhaust the runner's memory. Callables run in a worker thread (async ones on that
thread's own event loop), so neither blocking nor CPU-bound code stalls the runner's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.runner.reaper import Reaper
from shared.run_context import RunContext

MAX_LINE = 2000  # characters kept of one output line


@dataclass
class Outcome:
    ok: bool
    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    output_tail: str | None = None
    result: Any = None


def render_argv(argv: list[str], values: dict[str, Any]) -> list[str]:
    """Substitute {placeholders} inside each argument separately: a value can never become two
    arguments, and nothing is ever parsed by a shell. Raises ValueError naming the argument.
    `{file.path}`-style names are attribute lookups on values["file"] (services/runner/inputs.py)."""
    out = []
    for arg in argv:
        try:
            out.append(arg.format_map(values))
        except (KeyError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"cannot fill placeholders in {arg!r}: {exc}") from None
    return out


async def run_command(
    argv: list[str], cwd: str, env: dict[str, str], timeout: float, kill_grace: float, output_lines: int,
    reaper: Reaper | None = None,
) -> Outcome:
    """`reaper` is told the job's process group for as long as it may exist, so that the job dies
    with the runner even when the runner is killed outright (services/runner/reaper.py)."""
    tail: deque[str] = deque(maxlen=max(output_lines, 1))
    try:
        proc = await _spawn(argv, cwd, env)
    except FileNotFoundError as exc:
        if exc.filename == cwd:  # the child's chdir failed, not the exec
            return Outcome(ok=False, error=f"working directory not found: {cwd}")
        return Outcome(ok=False, error=f"program not found: {argv[0]!r} (cwd {cwd})")
    except PermissionError:
        return Outcome(ok=False, error=f"program not executable: {argv[0]!r}")
    except OSError as exc:
        return Outcome(ok=False, error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    assert proc.stdout is not None
    if reaper is not None:
        reaper.add(proc.pid)  # start_new_session: the group id is the leader's pid
    try:
        timed_out = await _supervise(proc, tail, timeout, kill_grace)
    finally:
        if reaper is not None:
            reaper.remove(proc.pid)
    text = "\n".join(tail) if output_lines else None
    if timed_out:
        return Outcome(ok=False, timed_out=True, exit_code=proc.returncode, output_tail=text,
                       error=f"timed out after {timeout:g}s; process group killed")
    code = proc.returncode
    if code == 0:
        return Outcome(ok=True, exit_code=0, output_tail=text)
    error = f"exited with code {code}" if code and code > 0 else f"killed by signal {-(code or 0)}"
    return Outcome(ok=False, exit_code=code, output_tail=text, error=error)


async def _spawn(argv: list[str], cwd: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """The job's process, in its own process group (a timeout kills the whole tree). Cancelled
    while asyncio is still connecting its pipes, the process may already be running and have
    started children: asyncio would kill the leader alone, so its group is killed here."""
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True))
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _kill_group(await spawn, 0)
        raise


async def _supervise(proc: asyncio.subprocess.Process, tail: deque[str], timeout: float, kill_grace: float) -> bool:
    """Wait for the job (killing its group at the timeout) and its output; True if it timed out."""
    assert proc.stdout is not None
    reader = asyncio.create_task(_collect(proc.stdout, tail))
    timed_out = False
    try:
        await asyncio.wait_for(_exited(proc), timeout)
    except TimeoutError:
        timed_out = True
        await _kill_group(proc, kill_grace)
    except asyncio.CancelledError:
        await _kill_group(proc, 0)  # runner shutting down mid-job: leave nothing behind
        raise
    # a background child still holding stdout would keep the reader open forever
    try:
        await asyncio.wait_for(asyncio.shield(reader), 2.0)
    except TimeoutError:
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 2.0)
    return timed_out


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit status, as soon as the process exits. On Python 3.11 Process.wait() returns only
    once its pipes close too, so a background child still holding stdout would keep a finished
    job 'running' until its timeout; returncode is set at exit, so poll it (5 ms rising to 50 ms)."""
    delay = 0.005
    while proc.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return proc.returncode


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the stream limit: take what is buffered
            line = await stream.read(65536)
        if not line:
            return
        tail.append(line.decode("utf-8", "replace").rstrip("\n")[:MAX_LINE])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(_exited(proc), grace)
    except TimeoutError:
        pass
    _signal_group(proc.pid, signal.SIGKILL)  # the leader may be gone while children linger
    await _exited(proc)


_loaded: dict[str, Callable[..., Any]] = {}


def load_callable(target: str) -> Callable[..., Any]:
    fn = _loaded.get(target)
    if fn is None:
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
        if not callable(fn):
            raise TypeError(f"{target} is not callable")
        _loaded[target] = fn
    return fn


_thread_loops = threading.local()


class JobExit(Exception):
    """A job called sys.exit() (or raised another BaseException): a failure of the job, which
    must not stop the runner."""


def _call_in_thread(fn: Callable[..., Any], ctx: RunContext) -> Any:
    try:
        result = fn(ctx)
        if asyncio.iscoroutine(result):
            loop = getattr(_thread_loops, "loop", None)
            if loop is None:
                loop = asyncio.new_event_loop()
                _thread_loops.loop = loop
            result = loop.run_until_complete(result)
    except Exception:
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by job code
        raise JobExit(f"{type(exc).__name__}({exc})") from None
    return result


async def run_callable(target: str, ctx: RunContext, timeout: float, cwd: str) -> Outcome:
    try:
        if cwd not in sys.path:
            sys.path.append(cwd)  # jobs next to the config file are importable
        fn = load_callable(target)
    except Exception as exc:
        return Outcome(ok=False, error=f"cannot load {target}: {type(exc).__name__}: {exc}")
    # run_in_executor + wait: no extra task per call (to_thread + wait_for cost a visible share
    # of a trivial run, bench/)
    future = asyncio.get_running_loop().run_in_executor(None, _call_in_thread, fn, ctx)
    done, _ = await asyncio.wait([future], timeout=timeout)
    if not done:
        # a thread cannot be killed: it is abandoned and the run recorded as timed out. Use a
        # `run:` command for work that must be killable.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve, unlogged
        return Outcome(ok=False, timed_out=True, error=f"timed out after {timeout:g}s (thread abandoned)")
    try:
        result = future.result()
    except Exception as exc:
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome(ok=False, error=f"result is not JSON-serialisable: {exc}")
    return Outcome(ok=True, result=result)
