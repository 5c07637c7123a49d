"""A real PostgreSQL server for tests: its own data directory and port, started with
initdb/pg_ctl (as the `postgres` user when we are root: the server refuses to run as root),
password authentication (scram) on 127.0.0.1 only, stopped and removed afterwards.

`pg_server()` is a context manager; `fresh_dsn(server)` makes an empty database per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<v>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgServer:
    port: int
    password: str
    datadir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres "
                f"password={self.password}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_reason() -> str | None:
    if pg_bindir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install "
                "postgresql (the Makefile's APT_PACKAGES has it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed"
    return None


@contextmanager
def pg_server(netns: str | None = None) -> Iterator[PgServer]:
    """`netns`: run the server inside that network namespace (its 127.0.0.1)."""
    why = skip_reason()
    if why:
        pytest.skip(why)
    bindir = pg_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="i2nsf-pg-"))
    datadir = root / "data"
    password = secrets.token_urlsafe(16)
    (root / "pw").write_text(password + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(root / "pw", pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    os.chmod(root / "pw", 0o600)
    port = _free_port()

    in_ns = ["ip", "netns", "exec", netns] if netns else []

    def run(*cmd: str) -> None:
        subprocess.run([*in_ns, *as_user, *cmd], check=True, capture_output=True, timeout=60)

    run(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=scram-sha-256",
        f"--pwfile={root / 'pw'}", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=50")
    try:
        run(str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(root / "log"), "-o", opts,
            "-w", "-t", "30", "start")
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r} {log}") from exc
    try:
        yield PgServer(port, password, datadir)
    finally:
        subprocess.run([*in_ns, *as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def fresh_dsn(server: PgServer) -> str:
    """A new empty schema on `server` (much cheaper than a database); returns a DSN whose
    search_path is that schema, so a store made with it sees only its own tables."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
    return server.dsn() + f" options='-c search_path={name}'"
