"""A work queue keyed by recording id, run by worker threads (never the event loop).

A recording is queued at most once at a time; news about it while it is queued or being worked
on (closed, then discarded a moment later) makes the worker look at it once more afterwards,
so no change is lost and no recording is worked on by two threads at once. Without running
workers (the CLI), work is done at once in the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from recorder.store.writer import name_os_thread


class RecordingQueue:
    def __init__(self, work: Callable[[str], object], log: logging.Logger) -> None:
        self._work_fn = work
        self._log = log
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._again: set[str] = set()
        self._stopped = False
        self.errors = 0

    def start(self, workers: int, name: str) -> None:
        self._stopped = False
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix=name, initializer=name_os_thread, initargs=(f"cc-{name}",)
        )

    def stop(self) -> None:
        """Work in progress completes; what is still queued is dropped (it stays pending in
        the store and is found again by the next reconciliation)."""
        if self._pool is not None:
            self._stopped = True  # first: a submit that sees no pool drops its work
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def running(self) -> bool:
        """Worker threads run: :meth:`submit` only queues (it never blocks the caller)."""
        return self._pool is not None

    def submit(self, recording_id: str) -> None:
        """Queue (workers running), do it now (never started: the CLI), or drop it (stopped:
        a reconcile pass still running in its thread at shutdown; it stays pending in the
        store for the next start)."""
        pool = self._pool
        if pool is None:
            if not self._stopped:
                self._work_fn(recording_id)
            return
        with self._lock:
            if recording_id in self._queued:
                self._again.add(recording_id)
                return
            self._queued.add(recording_id)
        try:
            pool.submit(self._run, recording_id)
        except RuntimeError:  # shutting down
            with self._lock:
                self._queued.discard(recording_id)

    def _run(self, recording_id: str) -> None:
        while True:
            try:
                self._work_fn(recording_id)
            except Exception:
                self.errors += 1
                self._log.exception("finalize_error", extra={"kv": {"recording": recording_id}})
            with self._lock:
                if recording_id not in self._again:
                    self._queued.discard(recording_id)
                    return
                self._again.discard(recording_id)
