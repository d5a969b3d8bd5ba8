"""The embedded Postgres of `cropcron up`: the PostgreSQL binaries the pgserver package ships,
run as a supervised child of `up` (cropcron/child.py), not through pgserver's own process
management (which keeps dead PIDs in a handle list after a kill -9, leaves Postgres running
after a clean stop, and as root chmods every parent of the data dir).

- Data in <data-dir>/postgres, output in <data-dir>/postgres.log.
- Listens on 127.0.0.1 only, on a free port picked at each start of `up` (a restart under the
  same `up` keeps it); no unix socket. The address is in DATABASE_URL for the services.
- Password authentication (scram-sha-256) for everyone, no `trust`: the superuser `postgres` has
  a generated password kept in <data-dir>/postgres-password (mode 0600). A data dir made by an
  older cropcron (pgserver, trust) gets a password on its first start here.
- Postgres refuses to run as root: under root it runs as the system user `cropcron` (created if
  missing; CROPCRON_POSTGRES_USER names another), or as the owner of an existing data
  directory. Nothing outside <data-dir>/postgres changes permissions: if that user cannot reach
  the data dir, `up` stops with a message naming the directory in the way; if it cannot reach
  the binaries (Python under a private /root), they are linked or copied to <data-dir>/pginstall.
- A postmaster.pid left by a kill -9 is cleared before a start (`up` holds the data dir's lock,
  so no other `up` runs this cluster).
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

from cropcron.child import ChildError, ChildProcess, EmbeddedError, process_argv, stop_pid
from cropcron.embedded import free_port, port_free

log = logging.getLogger("cropcron.embedded")

SUPERUSER = "postgres"
DEFAULT_SYSTEM_USER = "cropcron"
HBA = """\
# Written by `cropcron up` at every start: password (scram-sha-256) over 127.0.0.1, nothing else.
host all all 127.0.0.1/32 scram-sha-256
"""


def binaries() -> Path:
    """The bin/ directory of the PostgreSQL build inside the installed pgserver package, found
    without importing pgserver (its import creates lock files and warns without a runtime dir)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("pgserver is not installed: `cropcron up` runs its own Postgres from the `embedded` "
                            "extra; install it with `pip install 'cropcron[embedded]'` (from a checkout: `pip "
                            "install -e '.[embedded]'`), or set DATABASE_URL to a Postgres you run")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedError(f"the pgserver package has no PostgreSQL binaries in {bin_dir}; reinstall it, "
                            "or set DATABASE_URL")
    return bin_dir


def system_user(pgdata: Path) -> pwd.struct_passwd | None:
    """Who runs Postgres: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(OSError):
        owner = pgdata.stat().st_uid
        if (pgdata / "PG_VERSION").exists() and owner != 0:
            return pwd.getpwuid(owner)  # an existing cluster (e.g. pgserver's user `pgserver`)
    name = os.environ.get("CROPCRON_POSTGRES_USER") or DEFAULT_SYSTEM_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                             "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if result.returncode != 0:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)  # another `up` (another data dir) created it meanwhile
        raise EmbeddedError(f"Postgres refuses to run as root, and the system user {name!r} to run it as could not "
                            f"be created ({result.stderr.strip() or result.returncode}); create it, or run "
                            "`cropcron up` as an unprivileged user")
    log.info("created the system user %r to run the embedded Postgres", name)
    return pwd.getpwnam(name)


def _blocked(path: Path, user: pwd.struct_passwd) -> tuple[Path, os.stat_result] | None:
    """The first directory on the way to `path` that `user` may not enter (mode bits only)."""
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory, st
    return None


def _check_reachable(data_dir: Path, user: pwd.struct_passwd) -> None:
    blocked = _blocked(data_dir.resolve(), user)
    if blocked:
        where, st = blocked
        raise EmbeddedError(
            f"the embedded Postgres runs as the user {user.pw_name!r} (Postgres refuses to run as root), and that "
            f"user cannot enter {where} (mode {stat.S_IMODE(st.st_mode):04o}, owner "
            f"{_owner(st.st_uid)}) on the way to the data dir {data_dir}. cropcron does not change permissions "
            "of directories it did not create: use a data dir that user can reach, e.g. "
            "`--data-dir /var/lib/cropcron` (root's default), or run `cropcron up` as an unprivileged user")


def reachable_install(bin_dir: Path, data_dir: Path, user: pwd.struct_passwd) -> Path:
    """`bin_dir`, or, when `user` cannot reach it (Python installed under a private /root), the
    same PostgreSQL build under <data-dir>/pginstall (hard links where possible, owned by root,
    read-only to `user`), refreshed when the package's build changes. Nothing is chmod'ed."""
    install = bin_dir.parent  # .../site-packages/pgserver/pginstall
    if _blocked(install.resolve(), user) is None:
        return bin_dir
    # the wheel's binaries find their shared libraries at $ORIGIN/../../../pgserver.libs: keep the
    # layout from site-packages down
    top = install.parent.parent
    parts = [install.relative_to(top), *(p.relative_to(top) for p in top.glob(f"{install.parent.name}.libs"))]
    target = data_dir / "pginstall"
    source = f"{install.resolve()} {(bin_dir / 'postgres').stat().st_mtime_ns}\n"
    with contextlib.suppress(OSError):
        if (target / ".source").read_text() == source:
            return target / bin_dir.relative_to(top)
    log.info("the PostgreSQL binaries in %s are out of reach of the user %r; using a copy in %s",
             install, user.pw_name, target)
    tmp = data_dir / "pginstall.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for part in parts:
        shutil.copytree(top / part, tmp / part, copy_function=_link_or_copy)
    (tmp / ".source").write_text(source)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target / bin_dir.relative_to(top)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class EmbeddedPostgres(ChildProcess):
    name = "postgres"
    death_signal = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit
    stop_signal = signal.SIGINT
    log_markers = ("FATAL:", "PANIC:")

    def __init__(self, data_dir: Path, bin_dir: Path | None = None) -> None:
        super().__init__(data_dir / "postgres.log")
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self.password_file = data_dir / "postgres-password"
        self.bin_dir = bin_dir or binaries()
        self.user = system_user(self.pgdata)
        if self.user is not None:
            _check_reachable(data_dir, self.user)
        self.password = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    # -- set-up (once per `up`) -----------------------------------------------------------
    def prepare(self) -> None:
        """Create the cluster (or give an old one a password), write pg_hba.conf, pick the port."""
        if self.user is not None:
            self.bin_dir = reachable_install(self.bin_dir, self.data_dir, self.user)
        fresh = not self.password_file.exists()
        self.password = self._password()
        self._clear_stale_pid()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        elif fresh:
            self._set_password()
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(HBA)
        self._own(hba)
        hba.chmod(0o600)
        self.port = free_port()

    def _password(self) -> str:
        try:
            text = self.password_file.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        text = secrets.token_hex(24)  # URL-safe: it goes into DATABASE_URL as is
        tmp = self.password_file.with_name(self.password_file.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, self.password_file)
        return text

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _run(self, argv: list[str], what: str, stdin: str, cwd: Path) -> None:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=cwd, **self._as_user())
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            raise EmbeddedError(f"{what} failed ({' | '.join(output[-3:]) or result.returncode})")

    def _initdb(self) -> None:
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedError(f"{self.pgdata} exists but holds no Postgres cluster (no PG_VERSION); "
                                    "move it away and start again")
            self.pgdata.rmdir()
        # into a side directory first: a crash halfway leaves no half-made cluster in place
        tmp = self.data_dir / "postgres.initdb"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        self._own(tmp)
        log.info("creating the embedded Postgres cluster in %s", self.pgdata)
        # the password by file, owned by whoever runs initdb (a pipe of ours it could not reopen
        # as /dev/stdin after the change of user), and never on a command line
        pwfile = self.data_dir / "postgres-password.initdb"
        with contextlib.suppress(FileNotFoundError):
            pwfile.unlink()
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._own(pwfile)
        try:
            self._run([str(self.bin_dir / "initdb"), "-D", str(tmp), "-U", SUPERUSER, f"--pwfile={pwfile}",
                       "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"], "initdb", stdin="", cwd=tmp)
        finally:
            pwfile.unlink()
        tmp.rename(self.pgdata)

    def _set_password(self) -> None:
        """A cluster from before passwords (pgserver's trust): set the superuser's password in
        single-user mode, which needs no authentication."""
        log.warning("the embedded Postgres in %s trusted every local connection; setting a password (kept in %s)",
                    self.pgdata, self.password_file)
        sql = f"ALTER ROLE {SUPERUSER} PASSWORD '{self.password}';\n"
        self._run([str(self.bin_dir / "postgres"), "--single", "-D", str(self.pgdata), "-c", "listen_addresses=",
                   "-c", "unix_socket_directories=", "postgres"], "setting the Postgres password", stdin=sql,
                  cwd=self.pgdata)

    def _clear_stale_pid(self) -> None:
        """postmaster.pid naming a process that is gone or is not our postmaster: remove it (a
        recycled PID would otherwise keep Postgres from starting). Our own postmaster still
        running there (an `up` killed so fast its child outlived it): stop it first."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        argv = process_argv(pid)
        if argv and Path(argv[0]).name == "postgres" and str(self.pgdata) in argv:
            log.warning("an orphaned Postgres (pid %d) still runs on %s; stopping it", pid, self.pgdata)
            stop_pid(pid, signal.SIGINT)
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    # -- the child ------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [str(self.bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]

    def popen_options(self) -> dict[str, Any]:
        return {**self._as_user(), "cwd": self.pgdata}

    def check_can_start(self) -> None:
        self._clear_stale_pid()
        if not port_free(self.port):
            raise ChildError(f"port 127.0.0.1:{self.port} is taken by another process", permanent=True)

    def is_ready(self) -> bool:
        """postmaster.pid names our process and says `ready` (accepting connections)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"
