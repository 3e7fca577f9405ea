"""What the finalizer says once, not once per file per retry.

Three alarms, each a metric an operator can alert on and one log line when it starts (and
one when it ends):

- a *cause* that stops every finalization alike (the vault's disk full, the vault not
  writable, no key epoch): the first recording it stops is an error line naming the cause,
  the next ones are debug lines, until a recording is encrypted again (``finalize_resumed``,
  with how many attempts failed meanwhile);
- *plaintext overdue*: recordings whose audio is still unencrypted in the spool longer than
  the retry window (``overdue_after_s``) after their recording ended, whatever the cause (a
  key problem, a full disk, a store that cannot be written): the gauge
  ``callconsent_plaintext_overdue`` holds their number at each reconcile pass, and
  ``plaintext_overdue`` is said when it becomes non-zero, ``plaintext_overdue_cleared`` when
  it is zero again;
- *the spool's file system full*: the PBX cannot write the audio of calls in progress, so
  their recordings end early. Watched every ``spool_watch_s``: ``spool_full`` when free space
  falls under ``spool_full_bytes``, ``spool_space_back`` when it is back; a recording that was
  open while it was full is still kept (what was written is evidence too) but its
  ``recording.encrypted`` audit row and its log line say it may be cut short.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, func, or_, select

from recorder import metrics
from recorder.store.db import Database
from recorder.store.models import Call, Recording, RecordingState

log = logging.getLogger("callconsent.finalizer")
S = RecordingState


class Alarms:
    def __init__(self, spool: Path, spool_full_bytes: int) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[float, int]] = {}  # cause -> (since, attempts)
        self.overdue = 0
        self.spool = spool
        self.spool_full_bytes = spool_full_bytes
        self.full_since: datetime | None = None
        self.full_windows: list[tuple[datetime, datetime]] = []  # ended windows, newest last

    # -- causes that stop every finalization -------------------------------------------------

    def failed(self, cause: str, event: str, kv: Mapping[str, object]) -> None:
        """A finalization failed for ``cause``: said at error level the first time only."""
        with self._lock:
            since, attempts = self._failing.get(cause, (time.monotonic(), 0))
            self._failing[cause] = (since, attempts + 1)
        if attempts == 0:
            log.error(event, extra={"kv": {**kv, "said": "once, until a recording is encrypted"}})
        else:
            log.debug(event, extra={"kv": dict(kv)})

    def succeeded(self) -> None:
        """A recording was encrypted: every cause said so far is over."""
        if not self._failing:  # the hot path: one attribute read
            return
        with self._lock:
            over, self._failing = self._failing, {}
        for cause, (since, attempts) in sorted(over.items()):
            log.warning(
                "finalize_resumed",
                extra={
                    "kv": {
                        "cause": cause,
                        "after_s": round(time.monotonic() - since, 1),
                        "failed_attempts": attempts,
                    }
                },
            )

    # -- plaintext left past the retry window ------------------------------------------------

    def check_overdue(self, db: Database, node: str, after_s: float) -> int:
        """Count this host's recordings still in plaintext ``after_s`` after they ended;
        sets the gauge, says when it starts and ends."""
        cutoff = datetime.now(UTC) - timedelta(seconds=after_s)
        late = and_(
            Call.node == node[:64],
            or_(
                and_(Recording.state == S.CLOSED.value, Recording.closed_at < cutoff),
                and_(Recording.state == S.RECORDING.value, Call.ended_at < cutoff),
            ),
        )
        with db.read() as s:
            joined = select(func.count(), func.min(Recording.started_at)).join(
                Call, Call.id == Recording.call_id
            )
            count, oldest = s.execute(joined.where(late)).one()
            why = s.scalar(
                select(Recording.last_error)
                .join(Call, Call.id == Recording.call_id)
                .where(late, Recording.last_error.is_not(None))
                .order_by(Recording.started_at)
                .limit(1)
            )
        metrics.PLAINTEXT_OVERDUE.set(count)
        before, self.overdue = self.overdue, count
        if count and not before:
            log.error(
                "plaintext_overdue",
                extra={
                    "kv": {
                        "recordings": count,
                        "oldest_started": oldest,
                        "window_s": after_s,
                        "why": why or "see the finalize_failed / recording_pending lines",
                        "effect": "their audio is unencrypted in the spool",
                        "fix": "fix the cause; each is retried at every reconcile pass",
                    }
                },
            )
        elif before and not count:
            log.warning("plaintext_overdue_cleared", extra={"kv": {"recordings_before": before}})
        return count

    # -- the spool's file system ------------------------------------------------------------

    def check_spool(self) -> bool:
        """Is the spool's file system full now? Says so when that changes."""
        st = os.statvfs(self.spool)
        free = st.f_bavail * st.f_frsize
        full = free < self.spool_full_bytes
        now = datetime.now(UTC)
        with self._lock:  # the watcher and the workers' seals both look
            since = self.full_since
            if full and since is None:
                self.full_since = now
            elif not full and since is not None:
                self.full_since = None
                self.full_windows = [*self.full_windows[-99:], (since, now)]
        if full and since is None:
            metrics.SPOOL_FULL.set(1)
            log.error(
                "spool_full",
                extra={
                    "kv": {
                        "spool": self.spool,
                        "free_bytes": free,
                        "effect": "the PBX cannot write the audio of calls in progress: "
                        "their recordings end early (kept, and marked possibly_truncated)",
                        "fix": f"free space on the file system of {self.spool}",
                    }
                },
            )
        elif not full and since is not None:
            metrics.SPOOL_FULL.set(0)
            log.warning(
                "spool_space_back",
                extra={
                    "kv": {"free_bytes": free, "after_s": round((now - since).total_seconds(), 1)}
                },
            )
        return full

    def spool_was_full(self, started: datetime, ended: datetime | None) -> bool:
        """Was the spool full at some moment while this recording was open?"""
        if self.check_spool():
            return True
        end = ended or datetime.now(UTC)
        return any(since <= end and started <= until for since, until in self.full_windows)
