"""Broker credentials: one user per service and for each kind of outside program
(shared/permissions.py), each with a password in its own file (a compose secret, or
<data-dir>/nats-users/<user>.password written once by `cropcron up`, mode 0600). Never in an
environment variable, a config file or a log line.

A process finds its credentials in one of two ways:
- CROPCRON_NATS_USER and CROPCRON_NATS_PASSWORD_FILE (compose: one service per container);
- CROPCRON_NATS_CREDENTIALS_DIR, a directory of <user>.password files: each service in the
  process connects as its own user (`cropcron up` runs them all in one process).
Neither set: no credentials (a broker without authorization, e.g. in development).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.permissions import MATRIX, SERVICE_USER, USERS


class CredentialsError(RuntimeError):
    """Credentials that cannot be used: the message names the user and the file."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX_{self.user}"

    def __repr__(self) -> str:  # never the password, in a traceback or a log line
        return f"Credentials(user={self.user!r})"


def password_file(directory: Path, user: str) -> Path:
    return directory / f"{user}.password"


def read_password(path: Path, user: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CredentialsError(f"NATS user {user!r}: password file {path} does not exist") from None
    except OSError as exc:
        raise CredentialsError(f"NATS user {user!r}: cannot read password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"NATS user {user!r}: password file {path} is not text") from None
    if not text:
        raise CredentialsError(f"NATS user {user!r}: password file {path} is empty")
    return text


def from_environment(service: str | None = None, env: dict[str, str] | None = None) -> Credentials | None:
    """The credentials this process (or this service in it) connects with; None without any."""
    env = dict(os.environ) if env is None else env
    directory = env.get("CROPCRON_NATS_CREDENTIALS_DIR")
    user = env.get("CROPCRON_NATS_USER")
    if directory:
        who = user or SERVICE_USER.get(service or "", "cli")
        if service is not None and service in SERVICE_USER:
            who = SERVICE_USER[service]
        return Credentials(who, read_password(password_file(Path(directory), who), who))
    if user:
        path = env.get("CROPCRON_NATS_PASSWORD_FILE")
        if not path:
            raise CredentialsError(f"NATS user {user!r}: CROPCRON_NATS_PASSWORD_FILE is not set (the file that "
                                   "holds its password)")
        return Credentials(user, read_password(Path(path), user))
    return None


def ensure_users(directory: Path, file_mode: int = 0o600) -> dict[str, str]:
    """Every user's password, generated once into `directory` (mode 0700; the files `file_mode`:
    0600 for `cropcron up`, which reads them itself; compose mounts each as a secret into a
    container whose user is not the owner, so there the directory protects them and the files
    are 0644, as for the other compose secrets)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out: dict[str, str] = {}
    for user in USERS:
        path = password_file(directory, user)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, file_mode)
        out[user] = read_password(path, user)
    return out


def _hash(directory: Path | None, user: str, password: str) -> str:
    """bcrypt of the password, cached beside its file (hashing costs ~0.1 s a user)."""
    import bcrypt

    cache = directory / f".{user}.bcrypt" if directory is not None else None
    if cache is not None and cache.exists() and cache.stat().st_mtime >= password_file(directory, user).stat().st_mtime:  # type: ignore[arg-type]
        return cache.read_text().strip()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(11)).decode()
    if cache is not None:
        fd = os.open(cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(hashed)
    return hashed


def authorization_block(passwords: dict[str, str], directory: Path | None = None) -> str:
    """The nats-server `authorization` block: every user with its bcrypt hash and permissions.
    Without a `no_auth_user`, a connection without credentials is refused."""
    users = []
    for user in USERS:
        entry: dict[str, object] = {"user": user, "password": _hash(directory, user, passwords[user])}
        perms = MATRIX[user].as_config()
        if perms:
            entry["permissions"] = perms
        users.append(entry)
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"
