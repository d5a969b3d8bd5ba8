"""What-if: run a cropcron service with a candidate fix applied in memory, to measure a fix
before anyone makes it. Nothing under services/ is edited; the bench starts services through
this module instead of `python -m cropcron` when given --whatif.

    CROPCRON_BENCH_FIXES=runner-fetch python bench/whatif.py serve runner

Fixes (comma-separated in CROPCRON_BENCH_FIXES):

runner-fetch  RunnerService._fetch_loop (services/runner/service.py, as of 8c3de9a), two changes:
              1. the trigger taken by the long poll is started at once, before the extra batch
                 is fetched (today it waits for that fetch: up to its 50 ms timeout, so a lone
                 trigger starts >= 50 ms late);
              2. the pull subscription is kept after a batch fetch (today `psub = None` sits at
                 the `try` level, so every batch fetch drops the subscription without
                 unsubscribing and binds a new one: the old inbox keeps receiving what its
                 lingering pull requests still deliver, nobody reads it, and those triggers
                 wait for ack_wait (30 s) to be redelivered, then count as a lost attempt).
              The extra batch waits CROPCRON_BENCH_EXTRA_WAIT seconds (default 0.05, as today).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

# the code under test: CROPCRON_BENCH_SOURCE (a snapshot) or this checkout
sys.path.insert(0, os.environ.get("CROPCRON_BENCH_SOURCE") or str(Path(__file__).resolve().parent.parent))

import services.runner.service as runner_service  # noqa: E402
from services.runner.service import RunnerService  # noqa: E402
from shared import wire  # noqa: E402

log = logging.getLogger("cropcron.runner")
EXTRA_WAIT = float(os.environ.get("CROPCRON_BENCH_EXTRA_WAIT", "0.05"))


async def _fetch_loop_fixed(self: RunnerService, band: wire.Band, stop: asyncio.Event) -> None:
    psub: Any = None
    delay = 0.2
    idle = False
    while not stop.is_set():
        await self._acquire(band, idle)
        try:
            if psub is None:
                psub = await self.bus.js.pull_subscribe_bind(durable=wire.runner_consumer(band),
                                                             stream=wire.STREAM_TRIGGERS)
            msgs = await psub.fetch(1, timeout=runner_service.IDLE_POLL)
        except TimeoutError:
            self.slots.release()
            idle = True
            continue
        except asyncio.CancelledError:
            self.slots.release()
            raise
        except Exception as exc:
            self.slots.release()
            log.warning("runner: fetch from %s failed (%r); re-subscribing in %.1fs", band, exc, delay)
            await runner_service._drop(psub)
            psub = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        for msg in msgs:  # 1: start it now
            self._spawn(msg)
        if not msgs:
            self.slots.release()
        idle = not msgs or msgs[-1].metadata.num_pending == 0
        if not await _take_batch(self, psub, band):
            await runner_service._drop(psub)
            psub = None  # 2: only when the batch fetch failed


async def _take_batch(self: RunnerService, psub: Any, band: wire.Band) -> bool:
    """Whatever else is waiting, as a batch; False if the subscription looks broken."""
    extra = self.slots.take_more(self.settings.fetch_batch - 1)
    if not extra:
        return True
    more: list[Any] = []
    ok = True
    try:
        more = await psub.fetch(extra, timeout=EXTRA_WAIT)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        self.slots.release(extra)
        raise
    except Exception as exc:
        log.warning("runner: batch fetch from %s failed (%r); re-subscribing", band, exc)
        ok = False
    if len(more) < extra:
        self.slots.release(extra - len(more))
    for msg in more:
        self._spawn(msg)
    return ok


def main() -> None:
    fixes = {f.strip() for f in os.environ.get("CROPCRON_BENCH_FIXES", "").split(",") if f.strip()}
    if "runner-fetch" in fixes:
        RunnerService._fetch_loop = _fetch_loop_fixed  # type: ignore[method-assign]
    from cropcron.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
