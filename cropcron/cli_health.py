"""`cropcron healthcheck` in the CLI's parser; the check itself is cropcron/healthcheck.py."""

from __future__ import annotations

import argparse
from typing import Any

from cropcron import healthcheck


def cmd_healthcheck(args: argparse.Namespace) -> int:
    return healthcheck.check(args.url, args.timeout, args.json)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("healthcheck", help="exit 0 if this host's cropcron process is ready (its /healthz), "
                       "else 1 saying what is not")
    healthcheck.add_arguments(p)
    p.set_defaults(fn=cmd_healthcheck)
