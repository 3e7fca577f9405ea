"""Structured logs: one fact per line, ``event=… key=value``, phone numbers masked.

Code logs with ``log.info("consent_declined", extra={"kv": {"call": call_id}})`` or through
:func:`kv`. A filter masks anything that looks like a phone number in every message and
value, so a careless log line cannot leak one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_UUID = r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
# a UUID (recordings, calls, evidence: matched first, so kept whole: one whose first group is
# all digits, 2 % of them, read as a phone number and lost its head, "…80-f461-…"); else +
# followed by digits, or a long run of digits (with spaces, dashes, dots, brackets inside)
_NUMBER = re.compile(
    rf"(?<![\w-]){_UUID}(?![\w-])|(?<![\w.:/-])[+(]?\d[\d\s().-]{{5,}}\d(?![\w:/])"
)


def mask_numbers(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group())
        if len(digits) < 7 or _looks_like_an_id(m.group()):
            return m.group()
        return "…" + digits[-2:]

    return _NUMBER.sub(repl, text)


def _looks_like_an_id(s: str) -> bool:
    # UUIDs, Asterisk uniqueids and linkedids (1795348625.74), dates and times are not
    # phone numbers
    s = s.strip()
    return bool(re.fullmatch(_UUID, s) or re.fullmatch(r"\d{9,11}\.\d{1,6}", s) or _DATE.match(s))


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2})?")


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_numbers(record.msg)
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            record.kv = {
                k: mask_numbers(str(v)) if isinstance(v, str) else v for k, v in kv.items()
            }
        return True


# what must be quoted: spaces, quotes, "=", and anything that could end or split a line
# (C0 controls, DEL, NEL, and the Unicode line and paragraph separators str.splitlines honours)
_NEEDS_QUOTES = re.compile('[ "=\x00-\x1f\x7f\x85\u2028\u2029]')
# what json.dumps(ensure_ascii=False) leaves raw but a line reader may split on
_LINE_BREAKERS = {0x7F: "\\u007f", 0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
MAX_VALUE_CHARS = 2000  # a 64 KB caller name is cut, not copied into every line


def _cut(s: str) -> str:
    if len(s) <= MAX_VALUE_CHARS:
        return s
    return f"{s[:MAX_VALUE_CHARS]}…({len(s)} chars)"


def _fmt_value(v: Any) -> str:
    s = _cut(str(v))
    if s == "" or _NEEDS_QUOTES.search(s):
        return json.dumps(s, ensure_ascii=False).translate(_LINE_BREAKERS)
    return s


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [
            ts,
            record.levelname.lower(),
            record.name,
            f"event={_fmt_value(record.getMessage())}",
        ]
        kv = getattr(record, "kv", None) or {}
        parts += [f"{k}={_fmt_value(v)}" for k, v in kv.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **(getattr(record, "kv", None) or {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str).translate(_LINE_BREAKERS)


def setup(level: str = "info", fmt: str = "kv", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(_MaskFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("sqlalchemy", "alembic", "asyncio", "panoramisk"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def kv(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """``kv(log, logging.INFO, "consent_declined", call=cid, policy="sales")``"""
    logger.log(level, event, extra={"kv": fields})
