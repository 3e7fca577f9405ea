"""Catch the log lines an operator would take for trouble: every error-level line and every
traceback, from any logger (ours, asyncio's "Task exception was never retrieved", a library's).

The ordinary flows of a call (accept, decline, silence, hangups at any point) must log none:
a log that cries wolf on every hangup hides the real failures (issue 14, point 2)."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator


class ErrorLines(logging.Handler):
    """Keeps a readable copy of each error-level record and each record with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.exc_info:
            return
        kv = getattr(record, "kv", None) or {}
        text = f"{record.levelname} {record.name} {record.getMessage()}"
        text += "".join(f" {k}={v}" for k, v in kv.items())
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        self.lines.append(text)


@contextlib.contextmanager
def no_error_lines() -> Iterator[ErrorLines]:
    """Fail (on leaving the block) if anything logged an error or a traceback inside it."""
    handler = ErrorLines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
    assert not handler.lines, "error-level log lines in an ordinary flow:\n" + "\n".join(
        handler.lines
    )
