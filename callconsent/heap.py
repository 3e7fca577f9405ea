"""The daemon's memory over time: the C heap's free pages given back once a minute, and the
objects of start-up kept out of the cyclic garbage collector's way.

The daemon's worker threads (the finalizer's, asyncio's executor) each get a glibc malloc
arena. SQLite's page cache and the reconcile pass's transient work land in them, and glibc
returns an arena's free memory to the system only from its top, and only past a threshold
that it raises on its own (up to 64 MiB) after a large block is freed. Long runs showed those
arenas keeping a few MiB of free, fragmented memory each, so the daemon's RSS grew over hours
for memory nobody used (docs/reliability.md, the soak). ``malloc_trim(0)`` releases every
whole free page in every arena (``MADV_DONTNEED``), holding each arena's lock meanwhile: 2.9
ms for 30 MB of freed, fragmented memory, 0.03-0.07 ms once a minute's worth is returned. No
Python library exposes it, hence ctypes; where the C library has no
``malloc_trim`` (musl), this component does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("callconsent.daemon")

TRIM_EVERY_S = 60.0
#: the C heap's arenas the daemon's threads share (glibc's default: up to eight per core)
ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)


def limit_arenas(arenas: int = ARENA_MAX) -> str:
    """Cap glibc's malloc arenas, before the daemon starts any thread. Each thread that
    allocates gets an arena of its own, up to eight per core, and the free space left inside
    each is fragmented on its own: the store writer's, four finalizer workers' and asyncio's
    executor's. In 15-minute rounds of `bench/daemon_load.py` that free space grew by steps,
    memory nobody used (docs/performance.md). Two arenas: threads share, so their free
    blocks are reused rather than kept per thread. An operator's own setting in the
    environment (``MALLOC_ARENA_MAX``, or ``glibc.malloc.arena_max`` in ``GLIBC_TUNABLES``)
    wins. Returns the setting in effect, for the log: the cap, the operator's, or the C
    library's default (one without mallopt's cap: musl)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    operators = os.environ.get("MALLOC_ARENA_MAX") or (
        tunables if "glibc.malloc.arena_max" in tunables else None
    )
    if operators:
        return operators
    mallopt = _libc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None or mallopt(_M_ARENA_MAX, arenas) != 1:
        return "libc default"
    return str(arenas)


def freeze_startup_objects() -> int:
    """Once the daemon is ready: collect, then move every object alive into the collector's
    permanent generation (``gc.freeze``). The modules, the ORM's metadata, the policies and the
    components are about 100,000 objects that live as long as the process, and every full
    collection walked them all: 56–77 ms of the event loop's time, measured in a daemon under
    `bench/daemon_load.py --quick`, each a pause every call in progress waited out. Frozen
    objects are still freed by their reference counts; only a cycle among them would stay
    (a config reload's replaced policies, once per reload). Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _libc(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """A function of the C library (an int result), or None where it has none (musl)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def _malloc_trim() -> Callable[[], int] | None:
    fn = _libc("malloc_trim", [ctypes.c_size_t])
    return None if fn is None else lambda: int(fn(0))


class HeapTrim:
    """A daemon component: ``malloc_trim(0)`` in a worker thread every ``every_s``."""

    name = "heap_trim"

    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self.trim = _malloc_trim()
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.trim is None:
            log.info("heap_trim_unavailable", extra={"kv": {"why": "no malloc_trim in libc"}})
            return
        self._task = asyncio.create_task(self._loop())
        log.info("scheduled", extra={"kv": {"component": self.name, "every_s": self.every_s}})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        assert self.trim is not None
        while True:
            await asyncio.sleep(self.every_s)
            await asyncio.to_thread(self.trim)
            self.passes += 1
