"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

Written here rather than taken from a library: the protocol is one datagram per message on
the socket named by $NOTIFY_SOCKET (sd_notify(3)); python-systemd needs libsystemd headers to
build and the small PyPI wrappers are unmaintained. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("callconsent.systemd")


def notify(message: str) -> bool:
    """Send one notification; False when not run under systemd (or the socket is gone)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("notify_failed", extra={"kv": {"error": str(exc)}})
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, in seconds, if systemd asked this process for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.1)
    except ValueError:
        return None


class Watchdog:
    """Pings WATCHDOG=1 while the event loop runs: a blocked loop stops the pings and systemd
    restarts the daemon."""

    name = "watchdog"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        interval = watchdog_interval()
        if interval is not None:
            self._task = asyncio.create_task(self._ping(interval))
            log.info("watchdog", extra={"kv": {"interval_s": interval}})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _ping(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)
