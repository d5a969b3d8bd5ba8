"""CLI commands of the notifier (issue 4): `cropcron alerts`, `cropcron notify-test CHANNEL`, and
the notifications part of `validate`/`apply`/`up`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from cropcron import commands
from cropcron.tables import print_json, print_table
from services.notifier.channels import DeliveryError, Sender, make_sender
from services.notifier.render import PLAIN, Look
from services.notifier.settings import NotifierSettings
from services.notifier.state import config_bytes, load_config
from shared import wire
from shared.bus import Bus
from shared.config import Config, ConfigError
from shared.config import load_config as load_file
from shared.errors import CommandError, UserError
from shared.events import Alert, Notification, utcnow
from shared.i18n import Translator, resolve_locale, translator
from shared.notify_config import (
    NotificationsConfig,
    channel_problems,
    secret_problems,
)
from shared.queries import AlertsQuery
from shared.topology import ensure_topology

log = logging.getLogger("cropcron")


def check_secrets(config: Config) -> None:
    """validate/apply: a missing secret variable or a malformed webhook URL is refused now, not
    discovered at 3 a.m. (checked against this shell's environment, which the services share)."""
    problems = secret_problems(config.notifications)
    if problems:
        raise ConfigError(problems)


def warn_secrets(config: Config) -> None:
    for problem in secret_problems(config.notifications):
        log.warning("%s (the notifier will report deliveries to it as failed)", problem)


async def apply_notifications(bus: Bus, config: Config) -> None:
    """The notifier reads the applied section from KV (names of secrets only, never values)."""
    try:
        kv = await bus.js.key_value(wire.KV_NOTIFY)
    except Exception:
        await ensure_topology(bus.js)
        kv = await bus.js.key_value(wire.KV_NOTIFY)
    await kv.put(wire.NOTIFY_CONFIG_KEY, config_bytes(config.notifications))


def _sender(name: str, config: NotificationsConfig, look: Look) -> Sender:
    channel = config.channels.get(name)
    if channel is None:
        raise UserError(f"unknown channel {name!r} (known: {', '.join(sorted(config.channels)) or 'none configured'})")
    return make_sender(name, channel, NotifierSettings(), look=lambda: look)


def sample_notification(channel: str) -> Notification:
    now = utcnow()
    alert = Alert(id=f"test.{channel}.{now.timestamp():.0f}", level="info", kind="test", source="notify-test",
                  summary=f"cropcron test message for channel {channel}", at=now)
    return Notification(id=f"test.{channel}.{now.timestamp():.3f}", channel=channel, group_key="test:" + channel,
                        status="test", alerts=[alert], total=1, created_at=now)


async def send_test(name: str, config: NotificationsConfig, look: Look = PLAIN) -> dict[str, Any]:
    """A test message through one channel, written as the farm's messages are (`look`)."""
    sender = _sender(name, config, look)
    problems = channel_problems(name, config.channels[name])
    if problems:
        return {"channel": name, "ok": False, "error": problems[0]}
    try:
        message_id = await sender.send(sample_notification(name))
    except DeliveryError as exc:
        return {"channel": name, "ok": False, "error": exc.reason, "permanent": exc.permanent}
    finally:
        await sender.close()
    return {"channel": name, "ok": True, "message_id": message_id}


def cmd_notify_test(args: argparse.Namespace, with_bus: Callable[..., int]) -> int:
    def report(result: dict[str, Any]) -> int:
        _: Translator = args.words
        if args.json:
            print_json(result)
        elif result["ok"]:
            print(_("notify-test %(channel)s: sent", channel=args.channel)
                  + (f" (Message-ID {result['message_id']})" if result.get("message_id") else ""))
        else:
            print("cropcron: " + _("notify-test %(channel)s failed: %(error)s", channel=args.channel,
                                   error=result["error"]), file=sys.stderr)
        return 0 if result["ok"] else 1

    if args.config:
        config = load_file(args.config)
        locale = resolve_locale(config.system.locale)
        args.words = translator(locale)
        look = Look(locale, config.system.timezone)
        return report(asyncio.run(send_test(args.channel, config.notifications, look)))

    async def go(bus: Bus) -> int:
        kv = await bus.js.key_value(wire.KV_NOTIFY)
        config = await load_config(kv)
        if config is None:
            raise CommandError("no notifications config applied yet; run `cropcron apply FILE` or pass --config FILE")
        return report(await send_test(args.channel, config, Look(args.words.locale, args.tz)))

    return with_bus(args, go)


def cmd_alerts(args: argparse.Namespace, with_bus: Callable[..., int]) -> int:
    query = AlertsQuery(level=args.level, job=args.job, since=args.since, limit=args.limit, offset=0)

    async def go(bus: Bus) -> int:
        rows: list[dict[str, Any]] = await commands.request(bus, wire.HISTORY_ALERTS, query)
        if args.json:
            print_json(rows)
            return 0
        _: Translator = args.words
        at = (lambda v: v) if _.locale == "en" else (lambda v: _.when(v, args.tz))
        print_table([_("at"), _("level"), _("kind"), _("job"), _("summary"), _("deliveries")],
                    [[at(r["at"]), _(r["level"]) + (" " + _("(resolved)") if r["resolved"] else ""), r["kind"],
                      r["job"], r["summary"][:80], _deliveries(r["deliveries"])] for r in rows])
        return 0

    return with_bus(args, go)


def _deliveries(rows: list[dict[str, Any]]) -> str:
    last: dict[str, str] = {}
    for d in rows:  # oldest first: the last outcome per channel wins
        last[d["channel"]] = d["outcome"]
    return ", ".join(f"{c}: {o}" for c, o in last.items()) or "-"


def add_parsers(sub: Any, common: argparse.ArgumentParser, since: Callable[[str], Any], limit: Callable[[str], int],
                with_bus: Callable[..., int]) -> None:
    p = sub.add_parser("alerts", parents=[common], help="alerts raised, with their deliveries")
    p.add_argument("--level", choices=list(wire.ALERT_LEVELS), help="this level and above")
    p.add_argument("--since", type=since, help="e.g. 2h, or 2026-11-27T06:00")
    p.add_argument("--job")
    p.add_argument("--limit", type=limit, default=20)
    p.set_defaults(fn=lambda a: cmd_alerts(a, with_bus))
    p = sub.add_parser("notify-test", parents=[common], help="send a test message through a channel")
    p.add_argument("channel")
    p.add_argument("--config", help="take the channel from this file instead of the applied config")
    p.set_defaults(fn=lambda a: cmd_notify_test(a, with_bus))
