"""The FreeSWITCH Event Socket (ESL) wire format, sans I/O: bytes in, frames out; commands in,
bytes out. Nothing here touches a socket, so any I/O layer can drive it and tests feed it the
captured bytes directly.

Theory of operation
-------------------
FreeSWITCH sends *frames*. A frame is a block of ``Name: value`` lines ended by an empty line,
followed by exactly ``Content-Length`` bytes of body when that header is present. Everything we
rely on was captured from a real FreeSWITCH 1.10.12 (``tests/fixtures/freeswitch``):

* the reply to ``connect`` (outbound socket) is a ``command/reply`` frame of ~110 channel
  headers, URL-encoded (``Reply-Text: %2BOK%0A``), with ``Content-Type`` near its end and no
  ``Content-Length``;
* ``api/response`` and ``text/event-*`` frames carry a body; ``text/event-plain`` bodies are
  themselves a header block, URL-encoded, optionally with their own ``Content-Length`` and body
  (``BACKGROUND_JOB``); ``text/event-json`` bodies are one JSON object (body under ``_body``);
* ``text/disconnect-notice`` says the session ends (``Content-Disposition: linger`` after a
  hangup on a lingering socket, ``disconnect`` right before FreeSWITCH closes it), and
  ``text/rude-rejection`` is what an ACL-rejected client gets.

Header values are URL-decoded (FreeSWITCH encodes event and channel headers with
``switch_url_encode``; plain replies contain no ``%`` so decoding them is a no-op). The parser
enforces limits on the size of a header block and of a body, because a peer that never sends
the empty line must not make us buffer without end.

Commands we send are single lines (``api uuid_record …``) or ``sendmsg`` blocks. The serializer
refuses any value with a line break: a newline would let the value end the block and inject a
command. Callers never build commands from caller data anyway; this is the second fence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

DEFAULT_MAX_HEADER_BYTES = 256 * 1024  # a connect reply is ~5 KB; events with many variables ~30 KB
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # `api show channels` on a busy box is large, not this


class ProtocolError(Exception):
    """The peer sent something that is not ESL, or more than our limits allow: the connection
    cannot be trusted to stay in step and must be closed."""


class UnsafeCommand(ValueError):
    """A command or sendmsg value contains a line break (or is empty): refused, never sent."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as FreeSWITCH sent it: headers (values URL-decoded, order kept) and body."""

    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        """``Reply-Text`` of a ``command/reply`` (the connect reply's decodes to ``+OK\\n``)."""
        return self.headers.get("Reply-Text", "").strip()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


@dataclass(frozen=True, slots=True)
class Event:
    """A FreeSWITCH event (from ``text/event-plain`` or ``text/event-json``)."""

    headers: Mapping[str, str]
    body: str = ""

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def subclass(self) -> str:
        return self.headers.get("Event-Subclass", "")

    @property
    def unique_id(self) -> str:
        return self.headers.get("Unique-ID", "")

    @property
    def call_uuid(self) -> str:
        """``Channel-Call-UUID``: our call key (an agent leg shows the customer's while bridged)."""
        return self.headers.get("Channel-Call-UUID", "") or self.unique_id

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


@dataclass(slots=True)
class FrameParser:
    """Incremental frame parser: ``feed(bytes)`` returns the frames completed so far."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    _buffer: bytearray = field(default_factory=bytearray)
    _headers: dict[str, str] | None = None
    _body_length: int = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def _next(self) -> Frame | None:
        if self._headers is None:
            # FreeSWITCH separates frames by an empty line; stray newlines between frames
            # (seen after bodies that end in "\n") are not a frame of their own.
            while self._buffer[:1] == b"\n":
                del self._buffer[:1]
            end = self._buffer.find(b"\n\n")
            if end < 0:
                if len(self._buffer) > self.max_header_bytes:
                    raise ProtocolError(
                        f"header block over {self.max_header_bytes} bytes without an empty line"
                    )
                return None
            if end > self.max_header_bytes:
                raise ProtocolError(f"header block of {end} bytes over {self.max_header_bytes}")
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._headers = parse_header_block(block)
            self._body_length = _content_length(self._headers, self.max_body_bytes)
        if len(self._buffer) < self._body_length:
            return None
        body = bytes(self._buffer[: self._body_length])
        del self._buffer[: self._body_length]
        headers, self._headers = self._headers, None
        return Frame(headers, body)


def parse_header_block(block: bytes) -> dict[str, str]:
    """``Name: value`` lines to a dict, values URL-decoded. A name can repeat (a ``COMMAND``
    event carries the embedded command's own ``Event-Name: PRIVATE_COMMAND`` further down);
    the first occurrence wins, as with libesl's ``esl_event_get_header``.

    The block is decoded once, not line by line (a newline is never part of a UTF-8 sequence,
    so the text is the same), and only a value holding a ``%`` goes through ``unquote``: an
    event is 60-200 lines and the event loop parses every one the daemon receives."""
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(":")
        if not sep:
            line = line.rstrip("\r")
            if line:
                raise ProtocolError(f"not a header line: {line.encode()[:80]!r}")
            continue
        key = name.strip()
        if key and key not in headers:
            value = value.rstrip("\r").strip(" ")
            headers[key] = unquote(value, errors="replace") if "%" in value else value
    return headers


def plain_event_name(body: bytes) -> str | None:
    """The ``Event-Name`` of a ``text/event-plain`` body, read without parsing the body; None
    when it is not plainly there (no such line, an earlier line naming it oddly, a ``%`` in
    it): the caller then parses the whole event. The first occurrence, as
    :func:`parse_header_block` takes it."""
    end = body.find(b"\n\n")
    if end < 0:
        end = len(body)
    if body.startswith(b"Event-Name:"):
        at = 0
    else:
        at = body.find(b"\nEvent-Name:", 0, end) + 1
        if at == 0 or body.find(b"Event-Name", 0, at) >= 0:
            return None
    stop = body.find(b"\n", at, end)
    value = body[at + 11 : end if stop < 0 else stop].rstrip(b"\r").strip(b" ")
    if b"%" in value:
        return None
    return value.decode("utf-8", "replace")


def _content_length(headers: Mapping[str, str], limit: int) -> int:
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    try:
        length = int(raw)
    except ValueError:
        raise ProtocolError(f"Content-Length is not a number: {raw!r}") from None
    if length < 0 or length > limit:
        raise ProtocolError(f"Content-Length {length} outside 0..{limit}")
    return length


def event_from_frame(frame: Frame, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Event:
    """Decode the body of a ``text/event-plain`` or ``text/event-json`` frame."""
    if frame.content_type == "text/event-plain":
        return parse_plain_event(frame.body, max_body_bytes)
    if frame.content_type == "text/event-json":
        return parse_json_event(frame.body)
    raise ProtocolError(f"not an event frame: {frame.content_type!r}")


def parse_plain_event(body: bytes, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Event:
    end = body.find(b"\n\n")
    block, rest = (body, b"") if end < 0 else (body[:end], body[end + 2 :])
    headers = parse_header_block(block)
    inner = _content_length(headers, max_body_bytes)
    if inner > len(rest):
        raise ProtocolError(f"event body shorter than its Content-Length {inner}")
    return Event(headers, rest[:inner].decode("utf-8", "replace"))


def parse_json_event(body: bytes) -> Event:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"text/event-json body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("text/event-json body is not a JSON object")
    text = data.pop("_body", "")
    headers = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return Event(headers, text if isinstance(text, str) else json.dumps(text))


# -- serializer ----------------------------------------------------------------------------------


def _safe(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise UnsafeCommand(f"{what} contains a line break: {value[:60]!r}")
    return value


def command(line: str) -> bytes:
    """One ESL command (``api status``, ``linger``, ``event plain …``) as bytes."""
    if not line.strip():
        raise UnsafeCommand("empty command")
    return (_safe(line, "command") + "\n\n").encode()


def command_with_headers(line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A command followed by header lines (``bgapi …`` with ``Job-UUID``)."""
    out = [_safe(line, "command")]
    out += [f"{_safe(k, 'header name')}: {_safe(v, k)}" for k, v in headers]
    return ("\n".join(out) + "\n\n").encode()


def sendmsg(headers: Iterable[tuple[str, str]], uuid: str | None = None) -> bytes:
    """A ``sendmsg`` block; headers in the given order (as captured from real clients)."""
    first = f"sendmsg {_safe(uuid, 'uuid')}" if uuid else "sendmsg"
    return command_with_headers(first, headers)


def execute(
    app: str,
    arg: str | None = None,
    *,
    event_uuid: str | None = None,
    lock: bool = True,
    uuid: str | None = None,
) -> bytes:
    """``sendmsg`` executing one dialplan application, byte for byte as the captures show:
    ``call-command``, ``execute-app-name``, ``execute-app-arg``, ``Event-UUID``,
    ``event-lock``. ``Event-UUID`` becomes the ``Application-UUID`` of its
    ``CHANNEL_EXECUTE_COMPLETE``, which is how we match the completion to the command."""
    headers = [("call-command", "execute"), ("execute-app-name", app)]
    if arg:
        headers.append(("execute-app-arg", arg))
    if event_uuid:
        headers.append(("Event-UUID", event_uuid))
    if lock:
        headers.append(("event-lock", "true"))
    return sendmsg(headers, uuid)


def iter_header_lines(frame: Frame) -> Iterator[str]:
    """For logs and tests: the frame's headers as ``Name: value`` lines."""
    for k, v in frame.headers.items():
        yield f"{k}: {v}"
