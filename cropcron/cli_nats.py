"""`cropcron nats-users DIR`: the broker's users for a deployment that runs its own NATS
(compose): a password file per user (kept if it exists) and DIR/auth.conf, the nats-server
`authorization` block with their bcrypt hashes and permissions (shared/permissions.py), which
compose.yaml's NATS config includes. `cropcron up` does the same by itself in its data dir."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from shared.nats_auth import authorization_block, ensure_users, password_file
from shared.permissions import MATRIX, USERS

AUTH_CONF = "auth.conf"


def cmd_nats_users(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    passwords = ensure_users(directory, file_mode=0o644)
    conf = directory / AUTH_CONF
    conf.write_text(authorization_block(passwords, directory))
    os.chmod(conf, 0o644)
    for user in USERS:
        role = "operator (everything)" if MATRIX[user].everything else (
            f"{len(MATRIX[user].publish)} publish, {len(MATRIX[user].subscribe)} subscribe rules")
        print(f"{user:10} {password_file(directory, user)}  {role}")
    print(f"{conf}: the nats-server authorization block (compose.yaml includes it)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("nats-users", help="create the broker users' password files and their nats-server "
                       "authorization block (for compose; `up` does it itself)")
    p.add_argument("dir", help="where to keep them, e.g. secrets/nats")
    p.set_defaults(fn=cmd_nats_users)
