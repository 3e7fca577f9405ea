"""One ESL connection over asyncio: commands and their replies, events, and the completion of
the applications we execute.

Rules this module keeps (each one learnt from the captures in ``tests/fixtures/freeswitch``):

* **One command at a time.** ESL replies carry no id; the n-th ``command/reply`` or
  ``api/response`` answers the n-th command. A lock serialises commands; a reply that does not
  come in time leaves the stream out of step, so the connection is closed.
* **``api`` may be answered by ``command/reply``.** A restricted ``userauth`` user gets
  ``-ERR permission denied`` as a ``command/reply``, not an ``api/response``.
* **``execute`` completes with an event, not with its reply.** ``sendmsg`` is answered ``+OK``
  at once, even on a dead channel. We send our own ``Event-UUID`` and wait for the
  ``CHANNEL_EXECUTE_COMPLETE`` whose ``Application-UUID`` matches it.
* **A channel that is gone completes nothing more.** On an outbound session we follow the
  channel's own hangup (``CHANNEL_HANGUP``/``CHANNEL_HANGUP_COMPLETE``, or a disconnect notice);
  after it, an ``execute`` fails at once with :class:`ChannelGone` instead of waiting for a
  completion that will never come.
* **``bgapi`` completes with ``BACKGROUND_JOB``.** We name the job (``Job-UUID`` header) before
  sending, so the event cannot be missed even if it overtakes the reply.
* **Only the events someone reads are parsed.** ``myevents`` brings every event of the
  channel (``CHANNEL_EXECUTE``, ``CHANNEL_STATE``, ``CHANNEL_ANSWER``, …), 60-200 URL-encoded
  headers each; a listener names the events it wants (:meth:`EslConnection.add_listener`), and
  an event that neither a listener nor the connection itself (:data:`CORE_EVENTS`) wants is
  dropped on its ``Event-Name`` alone (:func:`esl_listener.protocol.plain_event_name`),
  unparsed. A listener that names none gets every event, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from esl_listener import protocol as p
from esl_listener import transport

log = logging.getLogger("callconsent.esl")

REPLY_TYPES = frozenset({"command/reply", "api/response"})
DEFAULT_COMMAND_TIMEOUT = 10.0
_T = TypeVar("_T")
MAX_UNCLAIMED_JOBS = 64  # BACKGROUND_JOBs kept for a bgapi whose reply we have not read yet
#: what the connection acts on itself: completions, background jobs, its channel's hangup
CORE_EVENTS = frozenset(
    {"CHANNEL_EXECUTE_COMPLETE", "BACKGROUND_JOB", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"}
)
Listener = Callable[[p.Event], None]


class EslError(Exception):
    """Something went wrong talking ESL; the message says what and where."""


class ConnectionClosed(EslError):
    """The connection is closed (by FreeSWITCH, by us, or after a protocol error)."""


class CommandTimeout(EslError):
    """No reply in time: the connection is out of step and has been closed."""


class ChannelGone(EslError):
    """The channel of this outbound session hung up: nothing executes on it any more."""


class AuthFailed(EslError):
    """FreeSWITCH refused our credentials, or its ACL rejected this address."""


@dataclass(frozen=True, slots=True)
class ApiReply:
    """What an ``api`` command printed. ``ok`` is False for ``-ERR …`` and ``-USAGE …``."""

    text: str

    @property
    def ok(self) -> bool:
        return not self.text.startswith("-")

    @property
    def first_line(self) -> str:
        return self.text.strip().split("\n", 1)[0]


class _Expired(Exception):
    """Set on a future whose wait ran out (:meth:`EslConnection._wait`); never escapes."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _new_uuid() -> str:
    return str(uuid.uuid4())


class EslConnection:
    """An ESL connection; ``channel_uuid`` (outbound sessions) enables hangup tracking.

    The daemon's connections are :meth:`over` a :class:`esl_listener.transport.FrameProtocol`
    (one reused read buffer); with a ``StreamReader`` a reader task reads instead."""

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | transport.TransportWriter,
        *,
        name: str = "esl",
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_header_bytes: int = p.DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = p.DEFAULT_MAX_BODY_BYTES,
        new_uuid: Callable[[], str] = _new_uuid,
    ) -> None:
        self.name = name
        self.command_timeout = command_timeout
        self._reader = reader
        self._writer = writer
        self._parser = p.FrameParser(max_header_bytes, max_body_bytes)
        self._max_body = max_body_bytes
        self._new_uuid = new_uuid
        self._lock = asyncio.Lock()
        self._reply: asyncio.Future[p.Frame] | None = None
        self._greeting: asyncio.Future[p.Frame] = asyncio.get_running_loop().create_future()
        self._executions: dict[str, asyncio.Future[p.Event]] = {}
        self._jobs: dict[str, asyncio.Future[p.Event]] = {}
        self._unclaimed_jobs: dict[str, p.Event] = {}
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._wanted: frozenset[str] | None = CORE_EVENTS  # None: every event
        self.events_skipped = 0  # plain events no one wanted, dropped unparsed
        self.channel_uuid: str | None = None
        self.channel_gone = False
        self.disconnect_notices: list[p.Frame] = []
        self.rejection: str | None = None
        self.frames_received = 0
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        if reader is not None:
            self._task = asyncio.create_task(self._read_loop(), name=f"{name}-reader")

    @classmethod
    def over(cls, protocol: transport.FrameProtocol, **kw: Any) -> EslConnection:
        """A connection fed by ``protocol`` (no reader task, no buffer per read)."""
        conn = cls(None, transport.TransportWriter(protocol), **kw)
        protocol.attach(conn)
        return conn

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the socket (a :class:`FrameProtocol`); the parser copies what it keeps."""
        if self.closed.is_set() or self._closing is not None:
            return
        try:
            for frame in self._parser.feed(data):  # type: ignore[arg-type]
                self._dispatch(frame)
        except p.ProtocolError as exc:
            # the peer's fault, not ours: the session's one end line (outbound_session_failed,
            # esl_disconnected) carries this reason; a line here would be a second one
            log.debug("esl_protocol_error", extra={"kv": {"conn": self.name, "error": str(exc)}})
            self._close_soon(f"protocol error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_soon(f"read failed: {exc}" if exc else "closed by FreeSWITCH")

    def _close_soon(self, reason: str) -> None:
        if self._closing is None and not self.closed.is_set():
            self._closing = asyncio.get_running_loop().create_task(
                self._shutdown(reason, cancel_reader=False)
            )

    # -- public surface ----------------------------------------------------------------------

    def add_listener(self, callback: Listener, events: Iterable[str] | None = None) -> None:
        """Call ``callback(event)`` for every event named in ``events`` (every event if None),
        in order, as they arrive. Events nobody names are not parsed."""
        names = None if events is None else frozenset(events)
        self._listeners = [*self._listeners, (callback, names)]  # a new list: see _on_event
        self._update_wanted()

    def remove_listener(self, callback: Listener) -> None:
        self._listeners = [(cb, names) for cb, names in self._listeners if cb != callback]
        self._update_wanted()

    def _update_wanted(self) -> None:
        wanted: frozenset[str] | None = CORE_EVENTS
        for _, names in self._listeners:
            if names is None:
                wanted = None
                break
            wanted |= names
        self._wanted = wanted

    async def greeting(self, timeout_s: float | None = None) -> p.Frame:
        """The unsolicited first frame of an inbound connection (``auth/request``)."""
        return await self._wait(self._greeting, timeout_s or self.command_timeout, "greeting")

    async def send(self, line: str, timeout_s: float | None = None) -> p.Frame:
        """Send one command line; return its ``command/reply`` or ``api/response`` frame."""
        return await self.send_raw(p.command(line), timeout_s)

    async def send_raw(self, data: bytes, timeout_s: float | None = None) -> p.Frame:
        async with self._lock:
            if self.closed.is_set():
                raise ConnectionClosed(f"{self.name}: closed ({self.close_reason})")
            self._reply = asyncio.get_running_loop().create_future()
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._reply = None
                await self._shutdown(f"write failed: {exc}")
                raise ConnectionClosed(f"{self.name}: write failed: {exc}") from None
            try:
                return await self._wait(self._reply, timeout_s or self.command_timeout, "reply")
            finally:
                self._reply = None

    async def connect(self) -> p.Frame:
        """Outbound sessions: ``connect``; the reply carries the channel's data."""
        frame = await self.send("connect")
        self.channel_uuid = frame.get("Unique-ID") or None
        return frame

    async def api(self, cmd: str, timeout_s: float | None = None) -> ApiReply:
        frame = await self.send(f"api {cmd}", timeout_s)
        if frame.content_type == "command/reply":  # refused before it ran (permissions)
            return ApiReply(frame.reply_text)
        return ApiReply(frame.text)

    async def bgapi(
        self, cmd: str, timeout_s: float | None = None, *, name_job: bool = True
    ) -> ApiReply:
        """Run ``cmd`` as a background job and wait for its ``BACKGROUND_JOB`` event. We name
        the job ourselves (``Job-UUID`` header) unless ``name_job`` is False, in which case
        FreeSWITCH names it in its reply."""
        job = self._new_uuid() if name_job else ""
        future: asyncio.Future[p.Event] = asyncio.get_running_loop().create_future()
        if job:
            self._jobs[job] = future
        try:
            headers = [("Job-UUID", job)] if job else []
            frame = await self.send_raw(p.command_with_headers(f"bgapi {cmd}", headers))
            if not frame.reply_text.startswith("+OK"):
                return ApiReply(frame.reply_text)
            if not job:
                job = frame.get("Job-UUID", "") or ""
                if job in self._unclaimed_jobs:  # it finished before we could ask for it
                    return ApiReply(self._unclaimed_jobs.pop(job).body)
                self._jobs[job] = future
            event = await self._wait(future, timeout_s or self.command_timeout, f"job {job}")
            return ApiReply(event.body)
        finally:
            self._jobs.pop(job, None)

    async def execute(
        self,
        app: str,
        arg: str | None = None,
        *,
        timeout_s: float | None = None,
        uuid: str | None = None,
    ) -> p.Event:
        """Run a dialplan application on the channel; return its CHANNEL_EXECUTE_COMPLETE."""
        if self.channel_gone and uuid is None:
            raise ChannelGone(f"{self.name}: channel {self.channel_uuid} has hung up")
        event_uuid = self._new_uuid()
        future: asyncio.Future[p.Event] = asyncio.get_running_loop().create_future()
        self._executions[event_uuid] = future
        try:
            frame = await self.send_raw(p.execute(app, arg, event_uuid=event_uuid, uuid=uuid))
            if not frame.reply_text.startswith("+OK"):
                raise EslError(f"{self.name}: execute {app} refused: {frame.reply_text}")
            return await self._wait(future, timeout_s or self.command_timeout, f"{app} to complete")
        finally:
            self._executions.pop(event_uuid, None)

    async def close(self, reason: str = "closed by us") -> None:
        await self._shutdown(reason)
        for task in (self._task, self._closing):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- reading -------------------------------------------------------------------------------

    async def _wait(self, future: asyncio.Future[_T], timeout_s: float, what: str) -> _T:
        """``future``'s result, or :class:`CommandTimeout` after ``timeout_s``. Each future
        here has one waiter, so it is awaited directly with a timer that fails it, not with
        ``wait_for(shield(…))`` (two more futures, a task wake-up and a timer per command: a
        third of a command's cost on the event loop; a session sends a dozen, waits for its
        executes' completions too). Cancelling the waiter cancels the future, which nothing
        else awaits: a reply arriving after that finds no command waiting, as before. And a
        cancel is no longer lost: Python 3.11's ``wait_for`` swallowed one that came as the
        awaited reply arrived (gh-86296), and the session went on to its next wait."""
        try:
            if not future.done():
                timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
                try:
                    await future
                finally:
                    timer.cancel()
            return future.result()
        except _Expired:
            if future is self._reply:
                await self._shutdown(f"no reply within {timeout_s:g}s")
            raise CommandTimeout(f"{self.name}: no {what} within {timeout_s:g}s") from None

    async def _read_loop(self) -> None:
        reason = "closed by FreeSWITCH"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for frame in self._parser.feed(data):
                    self._dispatch(frame)
        except p.ProtocolError as exc:
            # the peer's fault, not ours: the session's one end line (outbound_session_failed,
            # esl_disconnected) carries this reason; a line here would be a second one
            reason = f"protocol error: {exc}"
            log.debug("esl_protocol_error", extra={"kv": {"conn": self.name, "error": str(exc)}})
        except (ConnectionError, OSError) as exc:
            reason = f"read failed: {exc}"
        except asyncio.CancelledError:
            reason = self.close_reason or "closed by us"
        await self._shutdown(reason, cancel_reader=False)

    def _dispatch(self, frame: p.Frame) -> None:
        self.frames_received += 1
        kind = frame.content_type
        if kind in REPLY_TYPES:
            if self._reply is not None and not self._reply.done():
                self._reply.set_result(frame)
            else:
                raise p.ProtocolError(f"a {kind} frame arrived with no command waiting for it")
        elif kind.startswith("text/event-"):
            wanted = self._wanted
            if wanted is not None and kind == "text/event-plain":
                name = p.plain_event_name(frame.body)
                if name is not None and name not in wanted:
                    self.events_skipped += 1
                    return
            self._on_event(p.event_from_frame(frame, self._max_body))
        elif kind == "text/disconnect-notice":
            self.disconnect_notices.append(frame)
            if frame.get("Content-Disposition") == "linger":  # the channel hung up; we linger
                self._channel_ended()
        elif kind == "auth/request":
            if not self._greeting.done():
                self._greeting.set_result(frame)
        elif kind == "text/rude-rejection":
            self.rejection = frame.text.strip()
        else:
            log.debug("esl_frame_ignored", extra={"kv": {"conn": self.name, "type": kind}})

    def _on_event(self, event: p.Event) -> None:
        name = event.name
        if name == "CHANNEL_EXECUTE_COMPLETE":
            future = self._executions.get(event.get("Application-UUID", ""))
            if future is not None and not future.done():
                future.set_result(event)
        elif name == "BACKGROUND_JOB":
            job = event.get("Job-UUID", "") or ""
            future = self._jobs.get(job)
            if future is not None and not future.done():
                future.set_result(event)
            else:
                self._unclaimed_jobs[job] = event
                while len(self._unclaimed_jobs) > MAX_UNCLAIMED_JOBS:
                    self._unclaimed_jobs.pop(next(iter(self._unclaimed_jobs)))
        if self.channel_uuid and event.unique_id == self.channel_uuid:
            if name == "CHANNEL_HANGUP":
                self.channel_gone = True
            elif name == "CHANNEL_HANGUP_COMPLETE":
                self._channel_ended()
        for listener, names in self._listeners:  # rebound, never changed in place, by add/remove
            if names is not None and name not in names:
                continue
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the reader
                log.exception("esl_listener_failed", extra={"kv": {"conn": self.name}})

    def _channel_ended(self) -> None:
        """Whatever still waits for a completion on this channel will not get one."""
        self.channel_gone = True
        for future in self._executions.values():
            if not future.done():
                future.set_exception(ChannelGone(f"{self.name}: channel hung up"))

    async def _shutdown(self, reason: str, *, cancel_reader: bool = True) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        error = ConnectionClosed(f"{self.name}: {reason}")
        pending = [self._reply, self._greeting, *self._executions.values(), *self._jobs.values()]
        for future in pending:
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting any more
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        task = self._task
        if cancel_reader and task is not None and task is not asyncio.current_task():
            task.cancel()


async def open_inbound(
    host: str,
    port: int,
    password: str,
    *,
    user: str | None = None,
    name: str = "esl-inbound",
    timeout_s: float = DEFAULT_COMMAND_TIMEOUT,
) -> EslConnection:
    """Connect to FreeSWITCH's event socket and authenticate (``auth`` or ``userauth``)."""
    protocol = await asyncio.wait_for(transport.open_connection(host, port), timeout_s)
    conn = EslConnection.over(protocol, name=name, command_timeout=timeout_s)
    try:
        try:
            await conn.greeting(timeout_s)
        except ConnectionClosed:
            if conn.rejection:
                raise AuthFailed(f"{host}:{port} rejected us: {conn.rejection}") from None
            raise
        line = f"userauth {user}:{password}" if user else f"auth {password}"
        reply = await conn.send(line)
        if not reply.reply_text.startswith("+OK"):
            who = f"user {user}" if user else "the password"
            raise AuthFailed(f"{host}:{port} refused {who}: {reply.reply_text}")
    except BaseException:
        await conn.close("authentication failed")
        raise
    return conn
