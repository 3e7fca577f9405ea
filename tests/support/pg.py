"""A throwaway PostgreSQL server for the test session, on 127.0.0.1.

Uses ``$CALLCONSENT_TEST_PG_URL`` when set (a server that is already there); otherwise starts
a private cluster from Debian's ``postgresql`` binaries (``make test`` installs them) in a
temporary directory, as the ``postgres`` account when we are root (initdb refuses root), and
stops it at the end of the session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa


class PostgresUnavailable(Exception):
    pass


def _binaries() -> tuple[str, str]:
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        initdb, pg_ctl = os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    raise PostgresUnavailable(
        "PostgreSQL server binaries are not installed (Debian package postgresql): "
        "`make test` installs them when run as root with apt-get; "
        "or point CALLCONSENT_TEST_PG_URL at a server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WAIT = ("-w", "-t", "60", "start")


@dataclass
class Cluster:
    """A private cluster a test may stop and start again (a PostgreSQL outage)."""

    url: str
    data: str
    pg_ctl: str
    opts: str
    log: str
    run_as: list[str] = field(default_factory=list)

    def start(self) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", self.data, "-o", self.opts, "-l", self.log, *WAIT],
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"],
            capture_output=True,
        )


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A new private cluster from Debian's binaries (never ``$CALLCONSENT_TEST_PG_URL``'s
    server: a test may stop this one)."""
    initdb, pg_ctl = _binaries()
    run_as: list[str] = []
    base = tempfile.mkdtemp(prefix="callconsent-pg-")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no postgres account") from None
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    port = _free_port()
    found = Cluster(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        data,
        pg_ctl,
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off",
        os.path.join(base, "log"),
        run_as,
    )
    try:
        subprocess.run(
            [
                *run_as,
                initdb,
                "-D",
                data,
                "--auth=trust",
                "--username=postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
        )
        found.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise PostgresUnavailable(
            f"could not start a private PostgreSQL: {exc.stderr.decode(errors='replace')[-500:]}"
        ) from None
    try:
        yield found
    finally:
        found.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a superuser on a running server."""
    existing = os.environ.get("CALLCONSENT_TEST_PG_URL")
    if existing:
        yield existing
        return
    with cluster() as found:
        yield found.url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server, dropped afterwards."""
    name = f"cc_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.engine.make_url(admin_url).set(database=name)
        yield url.render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()
