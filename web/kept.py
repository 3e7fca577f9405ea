"""A figure that takes long to compute, kept between page loads and computed again in a
background thread.

The audit page's full check of the chain and the dashboard's totals before today read what
grows with every call: 16 µs an audit row, so minutes a page on a store of a few years
(docs/web.md, "Pages that read what grows"). Computed in the request, every reload started
another pass of its own. Here one pass runs at a time, in its own thread; a page waits for it
at most ``wait_s`` and otherwise shows the newest finished result, with when its pass started.

Written here: cachetools' and functools' caches expire by age but compute again in the
caller's thread, which is the wait this avoids. A pass that is Python busy for long (the audit
check) runs in a process of its own (:func:`in_a_process`), its thread waiting for it.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

log = logging.getLogger("callconsent.web")

T = TypeVar("T")


@dataclass(frozen=True)
class Result(Generic[T]):
    value: T
    key: Hashable  # what it was computed for (the dashboard: the UTC day)
    started: datetime  # when its pass started (UTC): what the page shows
    seconds: float  # how long the pass took


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    result: Result[T] | None  # the newest finished pass; None before the first one ends
    running_since: datetime | None  # a pass is running: when it started
    error: str | None  # the newest pass failed (its exception); ``result`` is the one before


#: a pass runs again no sooner than its own length divided by this: a long one (the audit
#: check of a log of millions of rows, a core busy for minutes) runs at most a tenth of the
#: time
BUSY_SHARE = 0.1


class Kept(Generic[T]):
    """``compute(key)`` again when a page asks and the newest pass is ``max_age_s`` old (or
    ten times its own length, if longer: :data:`BUSY_SHARE`) or was for another key; never
    two passes at once."""

    def __init__(
        self,
        name: str,
        compute: Callable[[Hashable], T],
        *,
        max_age_s: float,
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self._compute = name, compute
        self.max_age_s, self.wait_s, self.clock = max_age_s, wait_s, clock
        self._cond = threading.Condition()
        self._result: Result[T] | None = None
        self._result_at = 0.0  # clock() when the newest finished pass started
        self._running_since: datetime | None = None
        self._error: str | None = None

    def get(self, key: Hashable = None) -> Snapshot[T]:
        with self._cond:
            if self._running_since is None and self._stale(key):
                self._start(key)
            if self._running_since is not None:
                self._cond.wait_for(lambda: self._running_since is None, timeout=self.wait_s)
            return Snapshot(self._result, self._running_since, self._error)

    def _stale(self, key: Hashable) -> bool:
        if self._error is not None:
            return True  # the store was away: try again at the next page, not in max_age_s
        r = self._result
        if r is None or r.key != key:
            return True
        return self.clock() - self._result_at >= max(self.max_age_s, r.seconds / BUSY_SHARE)

    def _start(self, key: Hashable) -> None:
        self._running_since = datetime.now(UTC)
        thread = threading.Thread(
            target=self._run, args=(key, self._running_since, self.clock()),
            name=f"cc-kept-{self.name}", daemon=True,  # a read: nothing to finish at exit
        )  # fmt: skip
        thread.start()

    def _run(self, key: Hashable, started: datetime, started_at: float) -> None:
        t0 = time.perf_counter()
        try:
            value = self._compute(key)
        except Exception as exc:  # kept for the page; the thread must not die unheard
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("kept_pass_failed", extra={"kv": {"name": self.name, "error": error}})
            with self._cond:
                self._error, self._running_since = error, None
                self._cond.notify_all()
            return
        seconds = time.perf_counter() - t0
        with self._cond:
            self._result = Result(value, key, started, seconds)
            self._result_at, self._error, self._running_since = started_at, None, None
            self._cond.notify_all()
        log.info("kept_pass_done", extra={"kv": {"name": self.name, "seconds": round(seconds, 3)}})


def in_a_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a process of its own (spawned: ``fn`` and its result are pickled), for
    a pass that is Python busy for long: in a thread it would hold the GIL the requests need.
    The process is daemonic, so the server's exit ends it rather than waiting for it (a
    ProcessPoolExecutor's worker is not: the exit waited for the check to end). Raises
    RuntimeError with the child's exception, or if it died without a result."""
    spawn = multiprocessing.get_context("spawn")
    receive, send = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_send_result, args=(send, fn, args), name="cc-kept", daemon=True)
    child.start()
    send.close()  # the child's end: EOF here once it is gone
    try:
        ok, value = receive.recv()
    except EOFError:
        child.join()
        raise RuntimeError(
            f"the process ended without a result (exit code {child.exitcode})"
        ) from None
    finally:
        receive.close()
    child.join()
    if not ok:
        raise RuntimeError(value)
    return value  # type: ignore[no-any-return]


def _send_result(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = (True, fn(*args))
    except Exception as exc:  # the parent gets it as text: the exception may not pickle
        result = (False, f"{type(exc).__name__}: {exc}"[:300])
    conn.send(result)
    conn.close()
