"""`cropcron healthcheck`: ask this host's health endpoint whether the process is ready (exit 0)
or not (exit 1, with what is not ready). For compose healthchecks: the slim image has no curl."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from cropcron.commands import CommandError
from cropcron.endpoint import local_url
from shared.settings import ServiceSettings


def endpoint_url(settings: ServiceSettings) -> str:
    """The URL the process actually listens on (CROPCRON_HTTP_URL_FILE, written once it
    listens), else the one configured (CROPCRON_HTTP_HOST/PORT)."""
    if settings.http_url_file is not None:
        try:
            return str(json.loads(settings.http_url_file.read_text())["url"])
        except FileNotFoundError:
            raise CommandError(f"{settings.http_url_file} does not exist: the process has not started "
                               "its health endpoint (yet)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"cannot read CROPCRON_HTTP_URL_FILE {settings.http_url_file}: {exc}") from None
    return local_url(settings.http_host, settings.http_port)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    url = args.url or endpoint_url(ServiceSettings()) + "healthz"  # type: ignore[call-arg]
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310 - http(s) URL of our own
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        raise CommandError(f"health endpoint {url} not reachable: {getattr(exc, 'reason', exc)}") from None
    text = body.decode("utf-8", "replace")
    if status == 200:
        print(text if args.json else "ready")
        return 0
    try:
        report: Any = json.loads(text)
        why = ", ".join(report.get("not_ready", [])) or text
    except ValueError:
        why = text[:300]
    print(f"not ready (HTTP {status}): {why}", file=sys.stderr)
    return 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("healthcheck", help="exit 0 if this host's cropcron process is ready (its /healthz), "
                       "else 1 saying what is not")
    p.add_argument("--url", help="the /healthz URL (default: from CROPCRON_HTTP_URL_FILE or CROPCRON_HTTP_HOST/PORT)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--json", action="store_true", help="print the report when ready")
    p.set_defaults(fn=cmd_healthcheck)
