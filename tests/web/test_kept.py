"""web.kept: one pass at a time in its own thread, a page waits at most wait_s for it, a result
is computed again when it is max_age_s old or for another key, and a failed pass keeps the
result before it and is tried again at the next page."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Hashable
from pathlib import Path

import pytest
from clock import Clock

from web.kept import Kept, in_a_process


class Counting:
    """A compute that returns (key, its pass's number) and can be held until released."""

    def __init__(self) -> None:
        self.passes = 0
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def __call__(self, key: Hashable) -> tuple[Hashable, int]:
        self.passes += 1
        self.entered.set()
        assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return key, self.passes


def test_a_page_gets_the_pass_it_started_when_it_ends_within_the_wait() -> None:
    compute, clock = Counting(), Clock()
    kept = Kept("t", compute, max_age_s=60, wait_s=5, clock=clock)
    snap = kept.get("a")
    assert snap.result is not None and snap.result.value == ("a", 1)
    assert snap.running_since is None and snap.error is None
    assert snap.result.key == "a" and snap.result.seconds >= 0


def test_a_slow_pass_runs_once_while_pages_come_and_go() -> None:
    compute, clock = Counting(), Clock()
    kept = Kept("t", compute, max_age_s=60, wait_s=0.05, clock=clock)
    compute.release.clear()
    first = kept.get()
    assert compute.entered.is_set()
    assert first.result is None and first.running_since is not None
    pages = [threading.Thread(target=kept.get) for _ in range(5)]
    for page in pages:
        page.start()
    for page in pages:
        page.join(5)
        assert not page.is_alive(), "a page waited for the pass longer than wait_s"
    assert compute.passes == 1
    compute.release.set()
    kept.wait_s = 5
    done = kept.get()
    assert done.result is not None and done.result.value == (None, 1)
    assert compute.passes == 1


def test_a_result_is_kept_for_max_age_and_for_its_key() -> None:
    compute, clock = Counting(), Clock()
    kept = Kept("t", compute, max_age_s=60, wait_s=5, clock=clock)
    assert kept.get("day1").result.value == ("day1", 1)  # type: ignore[union-attr]
    clock.now += 59.9
    assert kept.get("day1").result.value == ("day1", 1)  # type: ignore[union-attr]
    clock.now += 0.1
    assert kept.get("day1").result.value == ("day1", 2)  # type: ignore[union-attr]
    assert kept.get("day2").result.value == ("day2", 3)  # type: ignore[union-attr]
    assert compute.passes == 3


def test_a_failed_pass_keeps_the_result_before_it_and_is_tried_again() -> None:
    compute, clock = Counting(), Clock()
    kept = Kept("t", compute, max_age_s=60, wait_s=5, clock=clock)
    kept.get()
    clock.now += 60
    compute.fail = OSError("the store is away")
    snap = kept.get()
    assert snap.error == "OSError: the store is away"
    assert snap.result is not None and snap.result.value == (None, 1)
    compute.fail = None  # no max_age_s to wait: the next page tries again
    snap = kept.get()
    assert snap.error is None and snap.result is not None and snap.result.value == (None, 3)


def test_a_long_pass_runs_again_no_sooner_than_ten_times_its_length() -> None:
    compute, clock = Counting(), Clock()
    kept = Kept("t", compute, max_age_s=60, wait_s=5, clock=clock)
    snap = kept.get()
    assert snap.result is not None
    # as if the pass had taken 30 s: the next one 300 s after it started, not 60
    object.__setattr__(snap.result, "seconds", 30.0)
    clock.now += 299
    assert kept.get().result.value == (None, 1)  # type: ignore[union-attr]
    clock.now += 1
    assert kept.get().result.value == (None, 2)  # type: ignore[union-attr]


def test_in_a_process_gives_the_result_or_the_error() -> None:
    assert in_a_process(pow, 2, 10) == 1024
    with pytest.raises(RuntimeError, match=r"^ValueError: invalid literal for int"):
        in_a_process(int, "not a number")
    with pytest.raises(RuntimeError, match=r"ended without a result \(exit code 3\)"):
        in_a_process(os._exit, 3)


def test_the_servers_exit_does_not_wait_for_a_process_still_running(tmp_path: Path) -> None:
    """A web server stopped while the audit check runs: it exits now, and the check's
    process with it (not after the check, as with a ProcessPoolExecutor's worker)."""
    script = tmp_path / "server.py"
    script.write_text(
        "import multiprocessing, sys, threading, time\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from web.kept import in_a_process\n"
        "if __name__ == '__main__':\n"
        "    threading.Thread(target=in_a_process, args=(time.sleep, 60), daemon=True).start()\n"
        "    time.sleep(2)\n"
        "    print(*(child.pid for child in multiprocessing.active_children()))\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - started < 30, "the exit waited for the process's 60 s"
    (pid,) = (int(word) for word in done.stdout.split())
    assert not Path(f"/proc/{pid}").exists(), "the check's process outlived the server"
