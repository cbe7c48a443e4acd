"""A throwaway PostgreSQL server for tests: its own data folder, port and socket, stopped and
removed afterwards. Nothing here touches a system cluster (e.g. Debian's on 5432).

    with postgres_server() as url:       # postgresql+psycopg2://postgres@127.0.0.1:PORT/nas
        ...

`postgres_url_or_skip()` turns "no server binaries / cannot start" into pytest.skip, or into
a failure when the environment variable CI is set (CI must really run the PostgreSQL tests).
Setup on Debian/Ubuntu (as root): apt-get install -y postgresql  (the venv needs psycopg2).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "nas"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server could not be started."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin (Debian layout), else the folder of initdb on PATH."""
    candidates = []
    for folder in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(folder).parent.name
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            try:
                candidates.append((float(version), Path(folder)))
            except ValueError:
                candidates.append((0.0, Path(folder)))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH); "
        "install them with: apt-get install -y postgresql"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> tuple[list[str], str | None]:
    """(command prefix, owner) to run server binaries: as 'postgres' when we are root."""
    if os.geteuid() != 0:
        return [], None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root but there is no 'postgres' user to run the server as") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser (util-linux) is missing: cannot drop to 'postgres'")
    return [runuser, "-u", "postgres", "--"], "postgres"


def _run(cmd: list[str], what: str, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise PostgresUnavailable(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


@contextmanager
def postgres_server(*, db_name: str = DB_NAME, start_timeout: int = 30) -> Iterator[str]:
    """Start a private server on 127.0.0.1:<free port> (trust auth), yield its SQLAlchemy URL."""
    bin_dir = find_bin_dir()
    prefix, owner = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if owner is not None:
        shutil.chown(root, user=owner)
        shutil.chown(sock, user=owner)
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--locale=C", "--no-sync"], "initdb")
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between choosing and binding it
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
            try:
                _run([*pg_ctl, "-l", str(logfile), "-w", "-t", str(start_timeout), "-o", options, "start"],
                     "pg_ctl start", timeout=start_timeout + 10)
                started = True
                break
            except PostgresUnavailable as e:
                last_error = e
                log_tail = logfile.read_text(errors="replace")[-500:] if logfile.is_file() else ""
                last_error = PostgresUnavailable(f"{e}; server log: {log_tail.strip()}")
        if not started:
            raise last_error or PostgresUnavailable("server did not start")
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db_name],
             "createdb")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{db_name}"
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "-t", "30", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """pytest.skip with the reason, or pytest.fail under CI (where the server must be installed)."""
    import pytest

    if in_ci():
        pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


@contextmanager
def postgres_url_or_skip() -> Iterator[str]:
    """postgres_server() for tests: skip (fail under CI) when no server can be started."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        unavailable("the Python driver psycopg2 is not installed (pip install psycopg2-binary)")
    server = postgres_server()
    try:
        url = server.__enter__()
    except PostgresUnavailable as e:
        unavailable(str(e))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)
