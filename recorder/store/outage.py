"""The store out of reach, said once, not once per call.

When the database cannot be reached (gone, its disk unmounted, PostgreSQL down), every call
fails the same way: its evidence cannot be written, so it is not recorded (fail closed) and
the dialplan's fallback runs. One error line says so when it starts, with the cause and the
fix; each call it costs is a debug line; one line says when the store is back (the next
commit that succeeds) and how many calls went unrecorded meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from recorder import metrics

log = logging.getLogger("callconsent.store")

#: how long a call's pending work (its ending, its PBX events) waits before it tries the store
#: again, by attempt; the last one repeats until the store is back
RETRY_S = (0.5, 1.0, 2.0, 5.0)


def retry_delay(attempt: int) -> float:
    """The wait before retry number ``attempt`` (0 is the first retry)."""
    return RETRY_S[min(attempt, len(RETRY_S) - 1)]


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or used at all (as opposed to a bad statement or a
    constraint: those are bugs, and say so with a traceback)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _why(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]


class Outage:
    """One per process: is the store out of reach, since when, and how many calls it cost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.calls = 0

    def report(self, exc: BaseException, what: str) -> None:
        """``what`` (a call, a sweep) failed because the store is out of reach."""
        with self._lock:
            first, self.since = self.since is None, self.since or time.monotonic()
            self.calls += 1
        metrics.STORE_UNAVAILABLE.set(1)
        if first:
            log.error(
                "store_unavailable",
                extra={
                    "kv": {
                        "why": _why(exc),
                        "effect": "calls are not recorded until it is back (fail closed)",
                        "fix": "check [database] url, the database server and its disk",
                    }
                },
            )
        else:
            log.debug("store_unavailable_again", extra={"kv": {"what": what}})

    def clear(self) -> None:
        """A commit succeeded: the store is back."""
        if self.since is None:  # the hot path: one attribute read
            return
        with self._lock:
            since, calls, self.since, self.calls = self.since, self.calls, None, 0
        if since is not None:
            metrics.STORE_UNAVAILABLE.set(0)
            log.warning(
                "store_back",
                extra={"kv": {"after_s": round(time.monotonic() - since, 1), "failed": calls}},
            )


OUTAGE = Outage()
