"""A real PostgreSQL server for the tests and benchmarks, started from the system's binaries
(``initdb`` and ``pg_ctl`` of PostgreSQL 15, which `.ci/run` makes sure of) in a temporary
folder, on a free loopback port, and stopped afterwards. As root it runs as the ``postgres``
user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's layout."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(folder: Path) -> Iterator[str]:
    """A running server with an empty database ``tailor``; yields its SQLAlchemy URL."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; .ci/run installs "
                           "them (apt-get install postgresql)")
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if user is not None:
        # The postgres user cannot reach into root's private temporary folders: a folder of its
        # own in /tmp, removed afterwards.
        folder = Path(tempfile.mkdtemp(prefix="tailor-pg-"))
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "pgdata"

    def run(*cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if user else list(cmd)
        done = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip()[-500:]}")

    port = _free_port()
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "tailor", "--auth=trust",
        "--no-sync", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log"), "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tailor",
            "tailor")
        yield f"postgresql+psycopg://tailor@127.0.0.1:{port}/tailor"
    finally:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        if user is not None:
            shutil.rmtree(folder, ignore_errors=True)
