"""`cropcron healthcheck` / `python -m cropcron.healthcheck`: ask this host's health endpoint
whether the process is ready (exit 0) or not (exit 1, saying what is not ready).

For compose healthchecks, which run it every few seconds in every container: standard library
only, so it starts in a fraction of the CLI's time (the slim image has no curl either).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464  # shared/settings.py ServiceSettings.http_port


def local_url(host: str, port: int) -> str:
    """How a process on this host reaches the endpoint (a wildcard address is reached on loopback)."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class Unusable(Exception):
    pass


def endpoint_url(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The URL the process actually listens on (CROPCRON_HTTP_URL_FILE, written once it listens),
    else the one configured (CROPCRON_HTTP_HOST / CROPCRON_HTTP_PORT)."""
    file = environ.get("CROPCRON_HTTP_URL_FILE")
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                return str(json.load(f)["url"])
        except FileNotFoundError:
            raise Unusable(f"{file} does not exist: the process has not started its health endpoint (yet)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Unusable(f"cannot read CROPCRON_HTTP_URL_FILE {file}: {exc}") from None
    port = environ.get("CROPCRON_HTTP_PORT", str(DEFAULT_PORT))
    if not port.isdigit() or int(port) == 0:
        raise Unusable(f"CROPCRON_HTTP_PORT is {port!r}: give --url, or set CROPCRON_HTTP_URL_FILE")
    return local_url(environ.get("CROPCRON_HTTP_HOST", DEFAULT_HOST), int(port))


def check(url: str | None, timeout: float = 3.0, verbose: bool = False) -> int:
    try:
        url = url or endpoint_url() + "healthz"
    except Unusable as exc:
        print(f"cropcron: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own http URL
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        print(f"cropcron: health endpoint {url} not reachable: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    text = body.decode("utf-8", "replace")
    if status == 200:
        print(text if verbose else "ready")
        return 0
    try:
        why = ", ".join(json.loads(text).get("not_ready", [])) or text[:300]
    except (ValueError, AttributeError):
        why = text[:300]
    print(f"not ready (HTTP {status}): {why}", file=sys.stderr)
    return 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the /healthz URL (default: from CROPCRON_HTTP_URL_FILE or CROPCRON_HTTP_HOST/PORT)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--json", action="store_true", help="print the report when ready")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cropcron healthcheck", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return check(args.url, args.timeout, args.json)


if __name__ == "__main__":
    sys.exit(main())
