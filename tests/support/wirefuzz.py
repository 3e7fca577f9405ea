"""Fuzzing the assembled daemon's sockets: a daemon running on an event loop in a thread (so
hypothesis examples, which are synchronous, can talk to it over real sockets), a log tap, and
the hypothesis strategy that mutates captured frames (split at every byte, truncated,
duplicated, reordered, oversized, bytes flipped, garbage inserted).

``CALLCONSENT_FUZZ_EXAMPLES`` sets the examples per test (``make test``: a few dozen;
``make reliability``: hundreds).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from callconsent.logs import KeyValueFormatter

_T = TypeVar("_T")
EXAMPLES = int(os.environ.get("CALLCONSENT_FUZZ_EXAMPLES", "25"))
DEADLINE_S = 8.0  # per connection: longer is a hang
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # each example bounds itself (DEADLINE_S): a hang fails, a slow box does not
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("CALLCONSENT_FUZZ_RANDOM") != "1",
)


class LoopThread:
    """An event loop running in a thread: the daemon's side of a fuzz test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = DEADLINE_S) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class LogTap(logging.Handler):
    """Every record the daemon logs, formatted as the daemon would (``event=… k=v``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.formatter_ = KeyValueFormatter()
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._lock2:
            out, self.records = self.records, []
        return out

    def line(self, record: logging.LogRecord) -> str:
        return self.formatter_.format(record)

    def __enter__(self) -> LogTap:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        for noisy in ("sqlalchemy", "alembic", "asyncio", "hypothesis", "panoramisk"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


def problems_in(tap: LogTap, records: list[logging.LogRecord]) -> list[str]:
    """What a hostile connection must never cause in the log: an error, a traceback, a line
    that is not one line."""
    bad = []
    for r in records:
        line = tap.line(r)
        if r.levelno >= logging.ERROR or r.exc_info:
            bad.append(f"{r.levelname} {line[:300]}")
        elif len(line.splitlines()) != 1:
            bad.append(f"not one line: {line[:300]!r}")
    return bad


@st.composite
def mutated(draw: st.DrawFn, frames: list[bytes], max_frames: int = 10) -> tuple[bytes, list[int]]:
    """Captured frames, chosen with repeats in any order, then mangled; and where to cut the
    stream into writes (every byte, some places, or none)."""
    chosen = draw(st.lists(st.sampled_from(frames), min_size=1, max_size=max_frames))
    data = bytearray(b"".join(chosen))
    how = draw(st.sampled_from(["as-is", "truncate", "flip", "oversize", "garbage", "huge-length"]))
    if how == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "oversize":
        at = draw(st.integers(0, len(data)))
        size = draw(st.sampled_from([70_000, 300_000, 2_100_000]))
        data[at:at] = draw(st.sampled_from([b"x", b"\n", b"a: b\n", b"\r\n"])) * (size // 4 + 1)
    elif how == "garbage":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=300))
    elif how == "huge-length":
        length = draw(
            st.sampled_from([b"-1", b"99999999999", b"1e9", b"", b"0x10", b"18446744073709551617"])
        )
        data[0:0] = b"Content-Type: text/event-plain\nContent-Length: " + length + b"\n\n"
    if draw(st.booleans()) and len(data) <= 3000:
        cuts = list(range(1, len(data)))  # one byte per write
    else:
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data))), max_size=20))))
    return bytes(data), cuts


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *[c for c in cuts if 0 < c < len(data)], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def send_and_hang_up(
    port: int, parts: list[bytes], *, first_line: bytes | None = None, read_s: float = DEADLINE_S
) -> bytes:
    """Connect, (read ``first_line`` if given), write the pieces, close our side, and read
    until the daemon closes (a hang fails). Returns what the daemon sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as sock:
        got = b""
        if first_line is not None:
            while not got.endswith(first_line):
                chunk = sock.recv(4096)
                if not chunk:
                    return got
                got += chunk
        try:
            for part in parts:
                sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the daemon refused and closed first: that is an end too
        sock.settimeout(read_s)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"the daemon kept the connection open past {read_s} s") from None
        return got
