"""Group commit: one writer thread commits what many calls queued, in one transaction.

A call's store changes (its consent evidence, a recording registered, a recording closed)
are *jobs*: functions of a :class:`Batch` that write with SQLAlchemy Core and append their
audit rows. :meth:`StoreWriter.submit` queues a job and returns a future; the writer thread
takes every job waiting (up to :data:`MAX_BATCH`), runs them in queue order in one
transaction, and resolves the futures only after the commit. So a caller that awaits its
future knows its change is durable (the rule "evidence stored before the recording starts"
holds), while one fsync serves every call of the batch.

The audit chain stays one line in queue order: the batch locks the tail once (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE`` on ``audit_head``, as :mod:`recorder.store.audit`
does), chains each job's rows on the tail in memory, inserts them together and moves the
tail once. Other writers (CLIs, other hosts) serialise on the same lock.

If a job raises, the batch is rolled back and its jobs are run again one transaction each,
so one failing call never takes the others' changes with it and gets its own error.

The thread starts with the first job and ends after :data:`IDLE_EXIT_S` without work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, bindparam, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from recorder import metrics
from recorder.store import audit, outage
from recorder.store.db import counting_transactions
from recorder.store.models import AuditEntry, AuditHead
from recorder.store.prepared import Prepared, driver_call

if TYPE_CHECKING:
    from recorder.store.db import Database

log = logging.getLogger("callconsent.store")

WRITER_THREAD = "cc-store-writer"


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``/proc/<pid>/task/<tid>/comm``,
    ``top -H``, ``bench/daemon_load.py``'s CPU by thread); Python's thread names stay inside
    the interpreter. At most 15 bytes; silently nothing where there is no ``/proc``."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


MAX_BATCH = 512
IDLE_EXIT_S = 2.0
#: how long lazy jobs wait for an urgent one to share its commit (PostgreSQL's commit_delay),
#: if one came within URGENT_RECENT_S (calls are in progress); else they are committed at once
#: (a burst of encryptions with no call around would only wait)
LINGER_S = 0.01
URGENT_RECENT_S = 0.1
#: how long *patient* lazy jobs wait at most: changes nobody hears, made after a call's
#: hangup (its end, its recording's close), with or without calls in progress. They wait
#: only while company keeps coming (a job within LINGER_S of the one before): under load
#: that is always (at 50 calls/s a job comes every few ms, an urgent one every 20 ms), so
#: they share a decision's commit instead of paying their own; the last calls' hangups
#: share commits with each other; and a burst of closes (a PBX restart) is committed once
#: it is whole, not PATIENT_S later (bench/finalize.py).
PATIENT_S = 0.05
#: a batch slower than this, from taking the lock to its commit's end, says so in the log
#: (``store_commit_slow``, split by phase): callers waited that long after their key press.
#: The steady goal's max turnaround (docs/performance.md): a caller's wait past it has its
#: cause in the log (a 105 ms accept key in a full run had none at 200 ms)
SLOW_S = 0.1
#: at most one such line per this many seconds (the others are counted in the next one)
SLOW_EVERY_S = 10.0
#: the transactions are counted for the benchmark (db.py counts the others by engine events)
COUNTING = counting_transactions()
_T = TypeVar("_T")
Job = Callable[["Batch"], _T]

_AUDIT = AuditEntry.__table__
_HEAD = AuditHead.__table__
# built once: building a statement costs more than running it (recorder.store.prepared)
_LOCK_HEAD = Prepared(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update())
_INSERT_AUDIT = Prepared(insert(_AUDIT))
_INSERT_HEAD = Prepared(insert(_HEAD))
_BEGIN_IMMEDIATE = Prepared(text("BEGIN IMMEDIATE"))  # SQLite only
_MOVE_HEAD = Prepared(
    update(_HEAD).where(_HEAD.c.id == 1).values(seq=bindparam("b_seq"), hash=bindparam("b_hash"))
)


class Batch:
    """What a job writes with: the batch's connection (its statements run on ``cursor``, the
    DB-API cursor, through :class:`recorder.store.prepared.Prepared`), and the audit tail
    (in memory)."""

    def __init__(
        self, conn: Connection, cursor: Any, ctx: audit.AuditContext, head: tuple[int, str]
    ) -> None:
        self.conn = conn
        self.cursor = cursor
        self.ctx = ctx
        self.head = head
        self.audit_rows: list[dict[str, Any]] = []

    def audit(
        self,
        *,
        actor: str,
        action: str,
        subject_type: str,
        subject_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """One audit row at the tail, as :func:`recorder.store.audit.append` writes it."""
        row = {
            "actor": actor,
            "action": action,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "details": dict(details or {}),
        }
        values = audit.chain(self.head, self.ctx, [row], at or datetime.now(UTC))
        self.audit_rows.extend(values)
        self.head = (values[-1]["seq"], values[-1]["hash"])


@contextlib.contextmanager
def _cursor(conn: Connection) -> Iterator[Any]:
    """The DB-API cursor of ``conn``, closed after; an error closing it (the connection is
    gone) never hides the error that ended the batch."""
    cursor = conn.connection.cursor()
    try:
        yield cursor
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


class _LoopWaiter:
    """An event loop's future for a job: the writer settles every one of a batch in ONE
    wake-up of their loop (``asyncio.wrap_future`` wakes it once per job)."""

    __slots__ = ("future", "loop", "outcome")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.outcome: tuple[Any, BaseException | None] = (None, None)

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()  # cancelled while queued: the job is not run

    def set_result(self, result: Any) -> None:
        self.outcome = (result, None)

    def set_exception(self, exc: BaseException) -> None:
        self.outcome = (None, exc)


def _settle(waiters: list[_LoopWaiter]) -> None:
    """In the event loop: every waiter of a batch."""
    for w in waiters:
        if not w.future.done():  # cancelled meanwhile: nobody listens
            result, exc = w.outcome
            if exc is None:
                w.future.set_result(result)
            else:
                w.future.set_exception(exc)


class StoreWriter:
    """The one thread that writes the ledger's jobs (see the module docstring)."""

    def __init__(self, db: Database, ctx: audit.AuditContext) -> None:
        self.db = db
        self.ctx = ctx
        self._queue: deque[tuple[Job[Any], Future[Any] | _LoopWaiter]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None  # the writer thread's (see _connection)
        self._urgent = 0  # jobs queued that someone waits on (not lazy)
        self._hasty = 0  # lazy jobs queued that are not patient
        self._urgent_at = -URGENT_RECENT_S  # when the last one was queued
        self._queued_at = 0.0  # when the last job of any kind was queued
        self._due = math.inf  # when the lazy jobs queued must be committed (monotonic)
        self.batches = 0  # transactions committed (for tests and the benchmark)
        self._slow_said_at, self._slow_unsaid = -math.inf, 0

    def submit(self, job: Job[_T], *, lazy: bool = False, patient: bool = False) -> Future[_T]:
        """Queue ``job``; its future resolves once it is committed. ``lazy``: nobody is
        waiting on it in a hurry (a call's opening, an encryption's record): while calls are
        in progress, the writer waits up to :data:`LINGER_S` after it was queued for a job
        that someone is waiting on and commits the lazy ones with it, so a call's six changes
        do not cost six commits. ``patient`` (lazy, nobody hears it: a call's end, a
        recording's close): up to :data:`PATIENT_S`."""
        future: Future[_T] = Future()
        self._queue_job(job, future, lazy or patient, patient)
        return future

    def submit_async(
        self, job: Job[_T], *, lazy: bool = False, patient: bool = False
    ) -> asyncio.Future[_T]:
        """:meth:`submit` for the running event loop: its future, settled in the loop."""
        waiter = _LoopWaiter(asyncio.get_running_loop())
        self._queue_job(job, waiter, lazy or patient, patient)
        return waiter.future

    def _queue_job(
        self, job: Job[Any], future: Future[Any] | _LoopWaiter, lazy: bool, patient: bool
    ) -> None:
        with self._cond:
            self._queue.append((job, future))
            now = self._queued_at = time.monotonic()
            sooner = False  # a lingering writer waits for urgent work or the first lazy due
            if not lazy:
                self._urgent += 1
                self._urgent_at = now
            elif not patient:
                self._hasty += 1
            if lazy and (due := now + (PATIENT_S if patient else LINGER_S)) < self._due:
                self._due, sooner = due, True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="callconsent-store-writer", daemon=True
                )
                self._thread.start()
            elif not lazy or sooner:
                self._cond.notify()

    def run(self, job: Job[_T], *, lazy: bool = False, patient: bool = False) -> _T:
        """Submit and wait (for synchronous callers, never the writer thread itself)."""
        return self.submit(job, lazy=lazy, patient=patient).result()

    def _run(self) -> None:
        name_os_thread(WRITER_THREAD)
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_EXIT_S)
                if not self._queue:
                    self._drop_connection()  # before a next thread may start and keep its own
                    self._thread = None
                    return
                self._linger()
                jobs = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._urgent = max(0, self._urgent - len(jobs))
                self._hasty = max(0, self._hasty - len(jobs))
                # jobs left behind a full batch are due at once
                self._due = time.monotonic() if self._queue else math.inf
            self._commit(jobs)

    def _waiting_pays(self) -> bool:
        """Only lazy jobs are queued, and a job may come to share their commit: while calls
        are in progress (an urgent job within URGENT_RECENT_S), or if all are patient."""
        if self._urgent or len(self._queue) >= MAX_BATCH:
            return False
        return not self._hasty or time.monotonic() - self._urgent_at < URGENT_RECENT_S

    def _linger(self) -> None:
        """Only lazy jobs queued: wait (``_cond`` held) until an urgent one comes, the batch
        is full, the first lazy job is due (:data:`LINGER_S`, :data:`PATIENT_S` after it was
        queued), or no job has come for :data:`LINGER_S` (company stopped coming). The count
        of urgent jobs may run ahead of the queue's order (an urgent job behind a full batch):
        it only ever shortens a wait."""
        while self._waiting_pays():
            left = min(self._due, self._queued_at + LINGER_S) - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _connection(self) -> Connection:
        """The writer thread's connection, kept while it runs: a pool checkout, its reset and
        check-in per batch cost about as much as a statement."""
        if self._conn is not None and self._conn.engine is not self.db.engine:
            self._drop_connection()  # the engine was replaced (tests simulate an outage so)
        if self._conn is None:
            self._conn = self.db.engine.connect()  # its transactions: see _transaction
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _commit(self, jobs: list[tuple[Job[Any], Future[Any] | _LoopWaiter]]) -> None:
        live = [(job, fut) for job, fut in jobs if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self._outcomes(live)
        finally:
            loops: dict[asyncio.AbstractEventLoop, list[_LoopWaiter]] = {}
            for _, fut in live:
                if isinstance(fut, _LoopWaiter):
                    loops.setdefault(fut.loop, []).append(fut)
            for loop, waiters in loops.items():
                with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                    loop.call_soon_threadsafe(_settle, waiters)

    def _said_slow(self, jobs: int, times: tuple[float, ...]) -> None:
        """One line for a slow batch, by phase: this process's other writers (``lock_ms``:
        a purge's batch), the store's lock (``begin_ms``: SQLite's busy wait for another
        connection or process, PostgreSQL's row lock on the audit tail), the statements, the
        commit (the disk's fsync). At most one per SLOW_EVERY_S; ``more`` counts the rest."""
        self._slow_unsaid += 1
        if times[-1] - self._slow_said_at < SLOW_EVERY_S:
            return
        ms = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(times)]
        log.warning(
            "store_commit_slow",
            extra={
                "kv": {
                    "ms": round((times[-1] - times[0]) * 1000, 1),
                    "lock_ms": ms[0],
                    "begin_ms": ms[1],
                    "statements_ms": ms[2],
                    "commit_ms": ms[3],
                    "jobs": jobs,
                    "more": self._slow_unsaid - 1,
                }
            },
        )
        self._slow_said_at, self._slow_unsaid = times[-1], 0

    def _outcomes(self, live: list[tuple[Job[Any], Future[Any] | _LoopWaiter]]) -> None:
        try:
            try:
                results = self._transaction([job for job, _ in live])
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # the kept connection had gone stale (a PostgreSQL restart): once more on a
                # fresh one, as the pool's pre-ping did when every batch checked one out
                results = self._transaction([job for job, _ in live])
        except Exception as exc:
            if len(live) == 1:
                live[0][1].set_exception(exc)
                return
            for one in live:  # each on its own: the failing one fails alone
                try:
                    one[1].set_result(self._transaction([one[0]])[0])
                except Exception as single:
                    one[1].set_exception(single)
            return
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)

    def _transaction(self, jobs: list[Job[Any]]) -> list[Any]:
        t0 = time.monotonic()
        with self.db.write_lock():
            t_lock = time.monotonic()
            conn = self._connection()
            try:
                with _cursor(conn) as cursor:
                    batch = Batch(conn, cursor, self.ctx, (0, audit.GENESIS_HASH))
                    # the transaction on the DB-API connection too (SQLAlchemy's begin and
                    # commit, and db.py's BEGIN listener, cost as much as three statements):
                    # SQLite's BEGIN IMMEDIATE as Database.write does; psycopg opens one at
                    # the first statement, the lock of the tail. Any error: the connection
                    # is dropped below, and the pool's reset on return rolls back.
                    if self.db.dialect == "sqlite":
                        _BEGIN_IMMEDIATE.run(batch, {})
                    found = _LOCK_HEAD.first(batch, {})
                    t_begun = time.monotonic()
                    if found is not None:
                        batch.head = (found["seq"], found["hash"])
                    results = [job(batch) for job in jobs]
                    if batch.audit_rows:
                        _INSERT_AUDIT.many(batch, batch.audit_rows)
                        seq, digest = batch.head
                        if found is None:
                            _INSERT_HEAD.run(batch, {"id": 1, "seq": seq, "hash": digest})
                        else:
                            _MOVE_HEAD.run(batch, {"b_seq": seq, "b_hash": digest})
                    t_commit = time.monotonic()
                    driver_call(batch, "COMMIT", conn.connection.dbapi_connection.commit)
            except BaseException:
                self._drop_connection()  # whatever went wrong, the next batch starts afresh
                raise
        t_end = time.monotonic()
        if t_end - t0 > SLOW_S:
            self._said_slow(len(jobs), (t0, t_lock, t_begun, t_commit, t_end))
        outage.OUTAGE.clear()  # said once when the store is back after an outage
        if COUNTING:
            metrics.STORE_TRANSACTIONS.labels("commit").inc()
        self.batches += 1
        return results
