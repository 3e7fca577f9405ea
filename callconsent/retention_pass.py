"""The retention pass inside ``callconsent serve``: every ``[retention] interval_s`` (and once
at start), in a worker thread, the same pass as ``callconsent retention run``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from recorder.governance.retention import Retention

log = logging.getLogger("callconsent.retention")


class RetentionPass:
    name = "retention"

    def __init__(self, retention: Retention, interval_s: float) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[object] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())
        log.info("scheduled", extra={"kv": {"component": self.name, "every_s": self.interval_s}})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running is not None:  # a batch in progress commits or rolls back whole
            with contextlib.suppress(Exception):
                await self._running

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> None:
        self._running = asyncio.ensure_future(asyncio.to_thread(self.retention.run))
        try:
            report = await asyncio.shield(self._running)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention_failed")
            return
        finally:
            if self._running.done():
                self._running = None
        level = logging.ERROR if report.failed else logging.INFO
        log.log(
            level,
            "retention_pass",
            extra={
                "kv": {
                    "purged": len(report.purged),
                    "failed": len(report.failed),
                    "held_kept": report.held,
                    "epochs_destroyed": ",".join(report.shredded) or "-",
                }
            },
        )
