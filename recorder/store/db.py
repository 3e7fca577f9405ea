"""Database engine and transactions: SQLite by default, PostgreSQL for many PBX hosts.

Every write goes through :meth:`Database.write`. On SQLite that transaction starts with
``BEGIN IMMEDIATE``, so two writers queue for the lock instead of one failing half-way with
"database is locked" when it upgrades a read lock; on PostgreSQL the audit tail row is locked
with ``FOR UPDATE`` (see :mod:`recorder.store.audit`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from recorder import metrics
from recorder.store import outage
from recorder.store.prepared import Reading

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 2048  # page cache per connection (SQLite's default)
PURGE_CACHE_KIB = 16384  # for a retention purge's transactions (Database.write(cache_kib=))


def in_batches(ids: Sequence[str], size: int = 512) -> Iterator[list[str]]:
    """``ids`` in lists for ``IN (...)``, each padded to a power of two by repeating its last
    id (``IN`` ignores duplicates). Each list length is its own SQL text, and SQLite's driver
    keeps up to 128 prepared statements per connection: a pass every minute with whatever
    count it had kept a new statement each time, tens of KiB, and pinned the worker thread's
    malloc heap above the pass's transient memory, so the daemon's RSS crept up minute after
    minute (docs/reliability.md). Padded, a query has at most log2(``size``) texts."""
    for i in range(0, len(ids), size):
        part = list(ids[i : i + size])
        width = 1 << (len(part) - 1).bit_length()
        yield part + part[-1:] * (width - len(part))


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def make_engine(url: str, **kw: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **kw,
        )
        _sqlite_pragmas(engine)
    else:
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "",
            "psycopg2",
        ):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we install
        engine = create_engine(parsed, pool_pre_ping=True, **kw)
    if counting_transactions():
        _count_transactions(engine)
    return engine


def counting_transactions() -> bool:
    """``CALLCONSENT_STORE_STATS=1``: count every transaction (the benchmark's figures)."""
    return os.environ.get("CALLCONSENT_STORE_STATS") == "1"


def _count_transactions(engine: Engine) -> None:
    """Count every transaction's end in ``callconsent_store_transactions`` (the benchmark's
    transactions per call)."""
    commits = metrics.STORE_TRANSACTIONS.labels("commit")
    rollbacks = metrics.STORE_TRANSACTIONS.labels("rollback")
    event.listen(engine, "commit", lambda _conn: commits.inc())
    event.listen(engine, "rollback", lambda _conn: rollbacks.inc())


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is always DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a committed finalization survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        # SQLite's own 2 MiB of page cache per connection: the daemon keeps its pooled
        # connections for its whole life, and at 16 MiB each their caches could hold up to
        # 16 MiB times the pool once the store outgrew them. A retention purge asks for
        # more, for its transaction only (``write(cache_kib=...)``).
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The engine plus the two kinds of transaction the code uses."""

    def __init__(self, url: str, **engine_kw: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kw)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time: this process's writers queue here (woken at once)
        # rather than in SQLite's busy handler, which sleeps up to 100 ms between tries
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        counting = counting_transactions()
        self._reads = metrics.STORE_TRANSACTIONS.labels("rollback") if counting else None

    def write_lock(self) -> AbstractContextManager[object]:
        """Held around every write transaction of this process on SQLite (nothing on
        PostgreSQL, whose writers serialise on the audit tail's row lock)."""
        return self._write_lock if self._write_lock is not None else nullcontext()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only look; objects stay usable (detached) after the block."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Reading]:
        """A light read: statements run with :class:`recorder.store.prepared.Prepared` on the
        DB-API cursor. On SQLite each is its own read (the connections run in autocommit:
        no ``BEGIN``), on PostgreSQL the driver opens a transaction at the first one; the
        pool's reset on return ends it. Counted as one read transaction, as before
        (``CALLCONSENT_STORE_STATS``)."""
        with self.engine.connect() as conn:
            reading = Reading(conn, conn.connection.cursor())
            try:
                yield reading
            finally:
                # an error closing it (the connection is gone) never hides the read's own
                # error, as for the writer's cursor
                with suppress(Exception):
                    reading.cursor.close()
                if self._reads is not None:
                    self._reads.inc()

    @contextmanager
    def write(self, *, cache_kib: int | None = None) -> Iterator[Session]:
        """One transaction that commits on success and rolls back on any error. On SQLite,
        ``cache_kib`` enlarges the connection's page cache for this transaction (a purge
        batch rewrites pages all over the audit indexes); it shrinks back before the
        commit, which frees the pages it held beyond that (SQLite drops unpinned pages past
        the limit as the commit unpins them)."""
        with self.write_lock(), self._sessions() as session:
            sized = cache_kib is not None and self.dialect == "sqlite"
            if self.dialect == "sqlite":
                conn = session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
                if sized:
                    conn.exec_driver_sql(f"PRAGMA cache_size=-{int(cache_kib or 0)}")
            try:
                yield session
                if sized:
                    session.connection().exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
                session.commit()
                outage.OUTAGE.clear()  # said once when the store is back after an outage
            except BaseException:
                session.rollback()
                if sized:  # the connection goes back to the pool with the usual cache
                    with suppress(Exception):
                        session.connection().exec_driver_sql(
                            f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}"
                        )
                        session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
