"""The FastAGI wire protocol, without I/O: the environment, replies, and safe commands.

Theory of operation
-------------------
Asterisk opens a TCP connection, sends ``agi_key: value`` lines and an empty line (the
*environment*), then answers each command line we send with one reply line (``200 result=…``,
``510 …``, ``511 …``) or a block (``520-…`` … ``520 End of proper usage.``). At any moment,
even just before the reply to our next command, it may send ``HANGUP`` on a line of its own:
a notification, never a reply (``../shared/pbx-transcripts/README.md`` facts 3–5).

Caller data is hostile (capture ``s7_injection``): a newline in the caller's name injects
lines into the environment, or ends it early so the rest arrives after the blank line, and a
newline in a variable splits a ``GET VARIABLE`` reply. So:

* only the keys Asterisk writes *before* ``agi_callerid`` are trusted, first occurrence wins;
  everything from ``agi_callerid`` on (``agi_arg_N`` included) is kept apart as untrusted;
* the session re-synchronises on a nonce after the environment (:func:`sync_command`), so
  leftover or injected lines are discarded before the first real reply;
* caller-controlled values are read base64-encoded (:func:`values_command`), so no reply can
  be split or forged;
* every argument we send is quoted with ``"`` and ``\\`` escaped, and one holding CR, LF or NUL
  is refused (:class:`UnsafeArgument`): it would end our command line and start another;
* ``EXEC`` arguments and paths must match a strict character set (:func:`exec_command`), so
  caller data can never reach an application or a file name.

This module does no I/O; :mod:`agi.session` drives it over a socket.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

#: Keys Asterisk writes before ``agi_callerid``: the only ones a caller cannot forge.
TRUSTED_KEYS = frozenset(
    (
        "agi_network",
        "agi_network_script",
        "agi_request",
        "agi_channel",
        "agi_language",
        "agi_type",
        "agi_uniqueid",
        "agi_version",
    )
)
#: Keys Asterisk writes from ``agi_callerid`` on (``agi_arg_N`` follow when the dialplan
#: passes arguments). Their values, and their very presence, can be forged by the caller.
CALLER_KEYS = frozenset(
    (
        "agi_callerid",
        "agi_calleridname",
        "agi_callingpres",
        "agi_callingani2",
        "agi_callington",
        "agi_callingtns",
        "agi_dnid",
        "agi_rdnis",
        "agi_context",
        "agi_extension",
        "agi_priority",
        "agi_enhanced",
        "agi_accountcode",
        "agi_threadid",
    )
)
_ARG_KEY = re.compile(r"^agi_arg_[1-9][0-9]*$")
DEAD_CHANNEL = 511
INVALID_COMMAND = 510
USAGE = 520


class ProtocolError(Exception):
    """Asterisk sent something FastAGI does not allow here; the session cannot go on."""


class UnsafeArgument(ValueError):
    """An argument would break out of its command line (CR, LF, NUL) or, for ``EXEC`` and
    paths, holds characters we never send there. Raised before anything is written."""


class EnvironmentTooLarge(ProtocolError):
    """The environment exceeded our limits before its blank line: not a PBX we talk to."""


# -- the environment -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgiEnvironment:
    """The environment of one FastAGI session, split by how far it can be trusted.

    The caller's part is kept as the text it came in and split only when asked for: nothing
    acts on it, and thousands of sessions would otherwise each hold a tuple per line for the
    garbage collector to walk."""

    trusted: dict[str, str]
    caller_part: str  # the lines from ``agi_callerid`` on, joined by "\n"
    anomalies: tuple[str, ...] = ()

    @property
    def untrusted(self) -> list[tuple[str, str]]:
        """The caller's part as (key, value) pairs, in the order they came."""
        if not self.caller_part:
            return []
        return [_key_value(text) for text in self.caller_part.split("\n")]

    @property
    def script(self) -> str:
        """The URL path after host:port (``consent/sales`` for ``agi://h:p/consent/sales``)."""
        return self.trusted.get("agi_network_script", "")

    @property
    def channel(self) -> str:
        return self.trusted.get("agi_channel", "")

    @property
    def uniqueid(self) -> str:
        return self.trusted.get("agi_uniqueid", "")

    @property
    def language(self) -> str:
        return self.trusted.get("agi_language", "")

    @property
    def hostile(self) -> bool:
        """Lines were injected, duplicated, or are missing: never act on untrusted fields."""
        return bool(self.anomalies)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(": ")
    return (key, value) if sep else (text.rstrip(":"), "")


def parse_environment(lines: Iterable[bytes]) -> AgiEnvironment:
    """Split the environment lines (without the final blank line; each with or without its
    ``\\n``) into trusted and untrusted parts. Every oddity is noted in ``anomalies``; none
    of them changes a trusted key."""
    trusted: dict[str, str] = {}
    anomalies: list[str] = []
    texts = [raw.decode("utf-8", "replace").rstrip("\n") for raw in lines]
    caller_from = len(texts)
    for i, text in enumerate(texts):  # Asterisk's part, up to agi_callerid
        key, sep, value = text.partition(": ")
        if not sep:
            anomalies.append(f"line without 'key: value' ({len(text)} chars)")
            key, value = text.rstrip(":"), ""
        if key == "agi_callerid":
            caller_from = i
            break
        if key not in TRUSTED_KEYS:
            anomalies.append(f"unexpected key {key[:40]!r} before agi_callerid")
        elif key in trusted:
            anomalies.append(f"repeated key {key!r}; the first one is kept")
        else:
            trusted[key] = value
    needed = ("agi_network_script", "agi_channel", "agi_uniqueid")
    anomalies += [f"missing key {k!r}" for k in needed if k not in trusted]
    caller = texts[caller_from:]
    if caller:
        anomalies += _caller_anomalies(caller)
    return AgiEnvironment(trusted, "\n".join(caller), tuple(anomalies))


def _caller_anomalies(texts: list[str]) -> list[str]:
    """What the caller's part tells of injected lines: a key Asterisk does not write there, a
    key twice, or no ``agi_threadid`` (the environment ended early)."""
    found: list[str] = []
    seen: set[str] = set()
    for i, text in enumerate(texts):
        key, sep, _ = text.partition(": ")
        if not sep:
            key = text.rstrip(":")
            if i:  # the first line's shape is already noted with Asterisk's part
                found.append(f"line without 'key: value' ({len(text)} chars)")
        if key not in CALLER_KEYS and not _ARG_KEY.match(key):
            found.append(f"unexpected key {key[:40]!r} after agi_callerid (injected line?)")
        elif key in seen:
            found.append(f"repeated key {key!r} after agi_callerid (injected line?)")
        seen.add(key)
    if "agi_threadid" not in seen:
        found.append("the environment ended before agi_threadid (cut short by caller data?)")
    return found


@dataclass
class EnvironmentReader:
    """Collects environment lines up to the blank line, within a size and line limit."""

    max_bytes: int = 16384
    max_lines: int = 128
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def feed(self, lines: list[bytes]) -> int | None:
        """Add lines (cut at ``\\n``, without it). Returns the index in ``lines`` of the
        blank line once it has arrived (what follows it is for the session), else None."""
        for i, line in enumerate(lines):
            self.size += len(line) + 1
            if self.size > self.max_bytes or len(self.lines) >= self.max_lines:
                raise EnvironmentTooLarge(
                    f"the AGI environment exceeds {self.max_bytes} bytes or {self.max_lines} "
                    f"lines (got {len(self.lines)} lines, {self.size} bytes without the blank "
                    "line)"
                )
            if line in (b"", b"\r"):
                return i
            self.lines.append(line)
        return None


# -- replies --------------------------------------------------------------------------------

_REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")
_RESULT = re.compile(rb"^result=(-?\d*)(?: \((.*)\))?(?: endpos=(-?\d+))?$")


class Reply(NamedTuple):
    """One reply. ``result`` is None when the line carries none (``510``, ``511``). A tuple:
    thousands of sessions build one per command."""

    code: int
    text: str
    result: int | None = None
    data: str | None = None
    endpos: int | None = None
    usage: str = ""  # the body of a 520 block

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def dead_channel(self) -> bool:
        return self.code == DEAD_CHANNEL


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """The unsolicited ``HANGUP`` line: the channel hung up. Not the reply to anything."""


@dataclass(frozen=True, slots=True)
class StrayLine:
    """A line that is neither a reply nor ``HANGUP`` (leftover environment, injected data)."""

    line: bytes


Incoming = Reply | HangupNotice | StrayLine


@functools.lru_cache(maxsize=512)
def parse_reply_line(line: bytes) -> Reply | None:
    """Parse one complete reply line (not a 520 block line); None if it is not one.

    Cached: most replies are the same few lines (``200 result=1``), and a Reply is a tuple,
    so one parsed line can be handed to every session that receives it."""
    m = _REPLY.match(line.rstrip(b"\r\n"))
    if m is None or m.group(2) != b" ":
        return None
    code, rest = int(m.group(1)), m.group(3)
    text = rest.decode("utf-8", "replace")
    if code != 200:
        return Reply(code, text)
    r = _RESULT.match(rest)
    if r is None:
        return Reply(code, text)
    number, data, endpos = r.groups()
    return Reply(
        code,
        text,
        int(number) if number not in (b"", b"-") else None,
        data.decode("utf-8", "replace") if data is not None else None,
        int(endpos) if endpos is not None else None,
    )


@dataclass
class ReplyParser:
    """Turns lines from Asterisk into :class:`Reply`, :class:`HangupNotice` or
    :class:`StrayLine`; assembles the multi-line ``520`` usage block."""

    max_usage_lines: int = 64
    _usage: list[str] | None = None

    def feed(self, line: bytes) -> Incoming | None:
        """One line in; an event out, or None while a 520 block is still open."""
        body = line.rstrip(b"\r\n")
        if self._usage is not None:
            if body.startswith(b"520 "):
                usage, self._usage = "\n".join(self._usage), None
                return Reply(USAGE, body[4:].decode("utf-8", "replace"), usage=usage)
            if len(self._usage) >= self.max_usage_lines:
                raise ProtocolError("a 520 usage block did not end")
            self._usage.append(body.decode("utf-8", "replace"))
            return None
        if body == b"HANGUP":
            return HangupNotice()
        if body.startswith(b"520-"):
            self._usage = [body[4:].decode("utf-8", "replace")]
            return None
        reply = parse_reply_line(body)
        return reply if reply is not None else StrayLine(line)


# -- commands -------------------------------------------------------------------------------

_VAR_NAME = re.compile(r"^(__?)?[A-Za-z][A-Za-z0-9_]{0,79}$")
#: What an EXEC argument or a path we send may contain: our UUIDs, spool paths, options.
_EXEC_SAFE = re.compile(r"^[A-Za-z0-9_./,()=:+@-]*$")
_APP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


_WORD = re.compile(r"[A-Z]+")


def quote(arg: str) -> str:
    """One argument as Asterisk's parser reads it: in double quotes, ``\\`` and ``"``
    escaped. CR, LF and NUL are refused: they would end the command line."""
    if "\n" in arg or "\r" in arg or "\x00" in arg:
        raise UnsafeArgument(f"refusing to send an argument holding CR, LF or NUL: {arg[:40]!r}")
    if "\\" in arg or '"' in arg:
        arg = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + arg + '"'


@functools.lru_cache(maxsize=64)
def _command_words(words: tuple[str, ...]) -> str:
    for w in words:
        if not _WORD.fullmatch(w):
            raise UnsafeArgument(f"not a command word: {w[:40]!r}")
    return " ".join(words)


def command(*words: str, args: Sequence[str] = ()) -> bytes:
    """A command line: fixed words (``GET``, ``VARIABLE``) then quoted arguments."""
    head = _command_words(words)
    if not args:
        return (head + "\n").encode()
    return (head + " " + " ".join([quote(a) for a in args]) + "\n").encode()


def safe_token(value: str, what: str) -> str:
    """Check a value that goes into an ``EXEC`` argument or a path we send."""
    if not _EXEC_SAFE.match(value):
        raise UnsafeArgument(f"{what} holds characters we never send to Asterisk: {value[:60]!r}")
    return value


def exec_command(app: str, *args: str) -> bytes:
    """``EXEC <app> "<arg,arg,…>"``. Every argument must match a strict character set: no
    caller data ever reaches an application through us."""
    if not _APP_NAME.match(app):
        raise UnsafeArgument(f"not an application name: {app[:40]!r}")
    joined = ",".join(safe_token(a, f"argument of {app}") for a in args)
    return command("EXEC", args=(app, joined)) if joined else command("EXEC", args=(app,))


def set_variable_command(name: str, value: str) -> bytes:
    if not _VAR_NAME.match(name):
        raise UnsafeArgument(f"not a variable name: {name[:40]!r}")
    return command("SET", "VARIABLE", args=(name, value))


@functools.lru_cache(maxsize=512)
def stream_file_command(path: str, escape_digits: str) -> bytes:
    """``STREAM FILE <path without extension> "<digits>"``; a path of ours, never caller data."""
    if not re.fullmatch(r"[0-9*#A-D]*", escape_digits):
        raise UnsafeArgument(f"not DTMF digits: {escape_digits!r}")
    return command("STREAM", "FILE", args=(safe_token(path, "prompt path"), escape_digits))


_EXPRESSION = re.compile(r"[A-Za-z0-9_${}()|,.-]+")


@functools.lru_cache(maxsize=512)
def values_command(
    expressions: tuple[str, ...], channel: str | None = None, nonce: str | None = None
) -> bytes:
    """One ``GET FULL VARIABLE`` reading several expressions, each base64-encoded and joined
    by ``|`` (not in the base64 alphabet): the reply can be neither split nor forged. With a
    ``nonce`` first, the same round trip re-synchronises the session (see :func:`sync_command`).
    Our expressions are constants, so the lines are cached."""
    for expr in expressions:
        if not _EXPRESSION.fullmatch(expr):
            raise UnsafeArgument(f"not an expression we send: {expr[:60]!r}")
    joined = "|".join("${BASE64_ENCODE(" + e + ")}" for e in expressions)
    if nonce is not None:
        joined = _checked_nonce(nonce) + "|" + joined
    args = (joined,) if channel is None else (joined, channel)
    return command("GET", "FULL", "VARIABLE", args=args)


def decode_values(reply: Reply, count: int, nonce: str | None = None) -> list[str] | None:
    """The values of a :func:`values_command`; None when the channel was not found."""
    if reply.code != 200 or reply.result != 1 or reply.data is None:
        return None
    parts = reply.data.split("|")
    if nonce is not None:
        if parts[0] != nonce:
            raise ProtocolError("the sync nonce is missing from the reply")
        parts = parts[1:]
    if len(parts) != count:
        raise ProtocolError(f"expected {count} encoded values, got {len(parts)}")
    try:
        return [base64.b64decode(p, validate=True).decode("utf-8", "replace") for p in parts]
    except ValueError as exc:
        raise ProtocolError(f"a value was not base64: {exc}") from None


def _checked_nonce(nonce: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{8,64}", nonce):
        raise UnsafeArgument("a sync nonce is letters, digits and '-'")
    return nonce


def sync_command(nonce: str) -> bytes:
    """A command whose reply only Asterisk can produce (``200 result=1 (<nonce>)``)."""
    return command("GET", "FULL", "VARIABLE", args=(_checked_nonce(nonce),))


def is_sync_reply(event: Incoming, nonce: str) -> bool:
    """The reply to :func:`sync_command`, or to a :func:`values_command` led by the nonce."""
    if not isinstance(event, Reply) or not event.ok or event.data is None:
        return False
    return event.data == nonce or event.data.startswith(nonce + "|")
