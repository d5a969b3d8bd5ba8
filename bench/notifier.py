"""The notifier's figures (issue 4), beside the prototype's pattern measured in the same run.

    python bench/notifier.py                    # a storm of 2,000 failures over 20 jobs; 30 single alerts
    python bench/notifier.py --storm 500 --jobs 5 --singles 10     # a quick one

The notifier runs as its own process (`cropcron serve notifier`) against a private nats-server on
a free loopback port, with one email channel to an aiosmtpd server in this process (loopback).
Dead-run events are published straight onto CROPCRON_RUNS (the notifier cannot tell them from a
runner's).

Beside it, the prototype's pattern as its commented-out sender would have worked: one
synchronous smtplib message per failure, sent from the scheduler's own thread, to the same
server.

Figures (printed, never asserted):
- storm: N dead runs over K jobs published at once -> time until every failure is accounted for
  in the emails received, the number of emails (the prototype: one per failure), the notifier's
  CPU seconds and RSS;
- single alerts: one dead run at a time (group window 0.2 s) -> email received, p50/p99 (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import re
import smtplib
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, Children, cpu_seconds, exit_on_signals, fmt, log, percentile, print_table, python_env, rss_mb  # noqa: E402,I001

from aiosmtpd.controller import Controller  # noqa: E402

from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config  # noqa: E402
from shared import wire  # noqa: E402
from shared.bus import Bus, connect, publish_until_acked  # noqa: E402
from shared.topology import ensure_topology  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.events import RunEvent, RunState, utcnow  # noqa: E402
from shared.health import instance_key  # noqa: E402

CHILDREN = Children()
LOG_DIR = RESULTS_DIR / "logs"
COUNT = re.compile(r"(\d+) alert\(s\) for")


class Inbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mails: list[tuple[float, str]] = []  # (arrival monotonic, text body)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content)
        text = "\n".join(p.get_payload(decode=True).decode() for p in msg.walk()
                         if p.get_content_type() == "text/plain")
        with self.lock:
            self.mails.append((time.monotonic(), text))
        return "250 OK"

    def accounted(self) -> int:
        with self.lock:
            return sum(int(m.group(1)) for _, text in self.mails if (m := COUNT.search(text)))

    def count(self) -> int:
        with self.lock:
            return len(self.mails)


def dead(job: str, n: int) -> RunEvent:
    return RunEvent(run_id=f"{job}-{n}", job=job, job_type="image_processing", state=RunState.DEAD, attempt=3,
                    at=utcnow(), error="exited with code 1", reason="all 3 attempts failed",
                    output_tail="tile 17 corrupt\n" * 5)


async def publish(bus: Bus, events: list[RunEvent]) -> None:
    items = [(wire.run_event_subject(e.job, e.state.value), e.to_bytes(), e.msg_id()) for e in events]
    assert not await publish_until_acked(bus, items, "bench")


async def apply(bus: Bus, smtp_port: int, window: str) -> None:
    from cropcron import cli_alerts

    config = parse_config({"notifications": {
        "group_window": window, "group_interval": "5s", "repeat_interval": "1h",
        "channels": {"mail": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                              "from": "cropcron@farm.example", "to": ["ops@farm.example"]}},
        "rules": [{"channels": ["mail"]}]}})
    await cli_alerts.apply_notifications(bus, config)


async def until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def wait_heartbeat(bus: Bus, service: str, instance: str) -> None:
    kv = await bus.js.key_value(wire.KV_SERVICES)
    for _ in range(600):
        try:
            if (await kv.get(instance_key(service, instance))).value:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{service} did not start")


def prototype_storm(port: int, n: int, jobs: int) -> float:
    """One synchronous SMTP conversation per failure, as the prototype's sender would have done."""
    start = time.monotonic()
    for i in range(n):
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = f"job{i % jobs} failed", "proto@farm.example", "ops@farm.example"
        msg.set_content("exited with code 1\n" + "tile 17 corrupt\n" * 5)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(msg)
    return time.monotonic() - start


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cropcron-bench-notify-"))
    port = free_port()
    write_nats_config(tmp / "js", port, tmp / "nats.conf")
    nats = CHILDREN.spawn([nats_server_binary(), "-c", str(tmp / "nats.conf")])
    wait_port(port, time.monotonic() + 15, nats)
    url = f"nats://127.0.0.1:{port}"
    inbox = Inbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    bus = await connect(url, "bench")
    results: dict[str, Any] = {}
    try:
        await ensure_topology(bus.js)
        await apply(bus, smtp_port, "2s")
        env = python_env({"NATS_URL": url, "CROPCRON_INSTANCE": "bench", "CROPCRON_NOTIFY_TICK": "0.1",
                          "CROPCRON_DEADMAN_INTERVAL": "60"})
        notifier = CHILDREN.spawn([sys.executable, "-m", "cropcron", "serve", "notifier"], env=env,
                                  log=LOG_DIR / "notifier.log")
        await wait_heartbeat(bus, "notifier", "bench")
        cpu0 = cpu_seconds([notifier.pid])
        log(f"storm: {args.storm} dead runs over {args.jobs} jobs")
        start = time.monotonic()
        await publish(bus, [dead(f"job{i % args.jobs}", i) for i in range(args.storm)])
        published = time.monotonic() - start
        ok = await until(lambda: inbox.accounted() >= args.storm, 300)
        results["storm_s"] = time.monotonic() - start if ok else None
        results["storm_publish_s"] = published
        await asyncio.sleep(2)
        results["storm_emails"] = inbox.count()
        results["storm_accounted"] = inbox.accounted()
        results["cpu_s"] = cpu_seconds([notifier.pid]) - cpu0
        results["rss_mb"] = rss_mb(notifier.pid)

        log(f"single alerts: {args.singles}, one at a time")
        await apply(bus, smtp_port, "0.2s")
        await asyncio.sleep(1)
        latencies = []
        for i in range(args.singles):
            before = inbox.count()
            t0 = time.monotonic()
            await publish(bus, [dead(f"single{i}", 0)])
            if await until(lambda b=before: inbox.count() > b, 30):
                latencies.append((inbox.mails[-1][0] - t0) * 1000)
        latencies.sort()
        results["single_p50_ms"] = percentile(latencies, 50)
        results["single_p99_ms"] = percentile(latencies, 99)

        log(f"prototype pattern: {args.storm} synchronous emails")
        before = inbox.count()
        results["proto_storm_s"] = await asyncio.to_thread(prototype_storm, smtp_port, args.storm, args.jobs)
        results["proto_emails"] = inbox.count() - before
        proto_single = []
        for _ in range(args.singles):
            proto_single.append(prototype_storm(smtp_port, 1, 1) * 1000)
        proto_single.sort()
        results["proto_single_p50_ms"] = percentile(proto_single, 50)
    finally:
        await bus.close()
        controller.stop()
        CHILDREN.stop_all()

    print(f"\nnotifier vs the prototype's pattern, {args.storm} failures over {args.jobs} jobs "
          f"(group window 2 s; singles with a 0.2 s window)")
    print_table(["", "notifier", "prototype pattern"], [
        ["storm: emails sent", results["storm_emails"], results["proto_emails"]],
        ["storm: failures accounted for", results["storm_accounted"], results["proto_emails"]],
        ["storm: seconds until all reported", fmt(results["storm_s"], 2), fmt(results["proto_storm_s"], 2)],
        ["single alert -> inbox p50 ms", fmt(results["single_p50_ms"]), fmt(results["proto_single_p50_ms"])],
        ["single alert -> inbox p99 ms", fmt(results["single_p99_ms"]), "-"],
        ["notifier CPU s during the storm", fmt(results["cpu_s"], 2), "-"],
        ["notifier RSS MB", fmt(results["rss_mb"]), "-"],
    ])
    emails = results["storm_emails"] or 1
    print(f"emails per storm: {results['proto_emails'] / emails:.0f}x fewer than one per failure")


if __name__ == "__main__":
    exit_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--singles", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
