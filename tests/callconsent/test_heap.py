"""The daemon gives the C heap's free pages back every minute (callconsent/heap.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from callconsent import daemon, heap

# A heap as the daemon's worker threads leave it: many blocks malloc'd in a thread's arena,
# most freed again, every 64th kept, so the free memory lies between live blocks where
# glibc's own trimming (from the top of the heap only) never reaches it.
FRAGMENTED = textwrap.dedent(
    """
    import threading
    from callconsent import heap

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    kept = []
    def churn():
        blocks = [bytearray(16_000) for _ in range(8_000)]  # 16 kB each: malloc, not pymalloc
        kept.extend(blocks[::64])
        blocks.clear()

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = rss_mib()
    trim = heap.HeapTrim().trim
    if trim is not None and "{mode}" == "trim":
        trim()
    print(before, rss_mib())
    """
)


def _rss_before_after(mode: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED.replace("{mode}", mode)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    before, after = (float(x) for x in out.stdout.split())
    return before, after


@pytest.mark.skipif(heap.HeapTrim().trim is None, reason="no malloc_trim in this C library")
def test_a_trim_gives_back_the_free_pages_between_live_blocks() -> None:
    before, untrimmed = _rss_before_after("none")
    assert untrimmed > before - 10  # left alone, the free memory stays resident
    before, trimmed = _rss_before_after("trim")
    assert before - trimmed > 60, (before, trimmed)  # ~120 MB freed, 2 MB kept


def test_the_daemon_trims_periodically_and_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    assert any(f.__name__ == "_heap_trim" for f in daemon.COMPONENT_FACTORIES)
    calls: list[int] = []

    async def scenario() -> None:
        trimmer = heap.HeapTrim(every_s=0.01)
        trimmer.trim = lambda: calls.append(1) or 0
        await trimmer.start()
        for _ in range(200):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await trimmer.stop()
        n = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == n  # stopped: no pass after stop()

    with caplog.at_level(logging.INFO, logger="callconsent.daemon"):
        asyncio.run(scenario())
    assert len(calls) >= 3
    assert any(
        r.getMessage() == "scheduled" and r.kv["component"] == "heap_trim" for r in caplog.records
    )


def test_without_malloc_trim_it_says_so_once_and_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        trimmer = heap.HeapTrim(every_s=0.01)
        trimmer.trim = None
        await trimmer.start()
        await asyncio.sleep(0.05)
        assert trimmer._task is None and trimmer.passes == 0
        await trimmer.stop()

    with caplog.at_level(logging.INFO, logger="callconsent.daemon"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records].count("heap_trim_unavailable") == 1


def test_freezing_moves_start_up_objects_out_of_the_collections() -> None:
    script = (
        "import gc\n"
        "from callconsent import app, heap\n"  # the daemon's modules, as at start-up
        "before = len(gc.get_objects())\n"
        "frozen = heap.freeze_startup_objects()\n"
        "print(before, frozen, len(gc.get_objects()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    before, frozen, after = (int(x) for x in out.stdout.split())
    assert frozen > 0.9 * before  # what a full collection walked, it no longer walks
    assert after < 0.01 * before, (before, frozen, after)


def test_the_daemon_freezes_once_started_before_it_says_ready(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os
    import signal

    said: dict[str, list[str]] = {}

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    def freeze() -> int:
        said["freeze"] = messages()
        return 0

    def ready() -> None:
        said["on_ready"] = messages()
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler: a graceful stop

    monkeypatch.setattr(daemon, "build_components", lambda app: [])
    monkeypatch.setattr(heap, "freeze_startup_objects", freeze)
    with caplog.at_level(logging.INFO, logger="callconsent.daemon"):
        asyncio.run(daemon.run(object(), on_ready=ready))  # type: ignore[arg-type]
    assert "ready" not in said["freeze"] and "ready" in said["on_ready"], said


# Eight threads alive at once, each allocating: glibc gives each an arena of its own unless
# capped. malloc_info() writes one <heap nr="…"> per arena in use.
ARENAS = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    from callconsent import heap

    capped = heap.limit_arenas() if sys.argv[1] == "cap" else None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    together = threading.Barrier(8)
    kept = []

    def work():
        kept.append([bytearray(50_000) for _ in range(8)])  # malloc (not pymalloc) blocks
        together.wait()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with tempfile.NamedTemporaryFile() as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        print(capped, open(f.name).read().count("<heap nr="))
    """
)


def _arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True,
        timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip
    capped, heaps = out.stdout.split()
    return capped, int(heaps)


@pytest.mark.skipif(heap.HeapTrim().trim is None, reason="not glibc's malloc")
def test_the_arena_cap_makes_threads_share_two_arenas() -> None:
    env = {"MALLOC_ARENA_MAX": ""}
    assert _arenas("none", env) == ("None", 9)  # the main arena and one per thread
    assert _arenas("cap", env) == (str(heap.ARENA_MAX), heap.ARENA_MAX)


@pytest.mark.skipif(heap.HeapTrim().trim is None, reason="not glibc's malloc")
@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"MALLOC_ARENA_MAX": "4"}, "4"),
        (
            {"MALLOC_ARENA_MAX": "", "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"},
            "glibc.malloc.arena_max=4",
        ),
    ],
)
def test_an_operators_arena_setting_wins(env: dict[str, str], said: str) -> None:
    assert _arenas("cap", env) == (said, 4)
