"""One FastAGI session: commands out, replies in, ``HANGUP`` noticed wherever it comes.

The server's protocol object hands every line Asterisk sends to :meth:`AgiSession.feed_line`
as it arrives. A reply completes the one command waiting for it; ``HANGUP`` is what it is, a
notification: the session is marked hung up and, by default, the socket is closed at once,
because Asterisk keeps the channel (and its recording) open until we do (capture
``linger_after_hangup``). A command in flight then fails with :class:`ChannelGone`, as does any
command answered ``511`` (dead channel).

Every command has a deadline; the server's sweeper (:meth:`expire_if_late`, a few times a
second) fails a late command with :class:`CommandTimeout` and closes the session, since a late
reply would otherwise be taken for the answer to the next command. One coarse sweep instead of
a timer per command keeps thousands of sessions cheap.

The session re-synchronises after the environment (the injection defence, see
:mod:`agi.protocol`) in the same round trip as its first ``values`` read, or alone before any
other first command.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from agi import protocol as p

log = logging.getLogger("callconsent.agi")

MAX_STRAY_LINES = 256  # leftover environment lines we discard while re-synchronising


class ChannelGone(Exception):
    """The channel hung up (``HANGUP``, ``511``) or Asterisk closed the session."""


class CommandTimeout(Exception):
    """Asterisk did not answer a command in time; the session has been closed."""


class AgiSession:
    def __init__(
        self,
        transport: asyncio.WriteTransport,
        env: p.AgiEnvironment,
        *,
        command_timeout: float = 10.0,
        close_on_hangup: bool = True,
        on_hangup: Callable[[AgiSession], None] | None = None,
        expect_sync: bool = False,
    ) -> None:
        self.transport = transport
        self.env = env
        self._loop = asyncio.get_running_loop()  # once: on 3.11 every lookup calls getpid()
        self.command_timeout = command_timeout
        self.close_on_hangup = close_on_hangup
        self.on_hangup = on_hangup
        self.hung_up = False
        self.closed = False
        self.stray_lines = 0
        self.commands = 0
        self._parser = p.ReplyParser()
        self._pending: asyncio.Future[p.Reply] | None = None
        self._sync_nonce: str | None = None
        self._needs_sync = expect_sync
        # lines that arrive before the sync (the rest of a cut-short environment)
        self._early: list[bytes] | None = [] if expect_sync else None
        self.deadline = 0.0  # loop time by which the pending command must be answered
        self._pending_line = b""
        self._gone_reason = "the session is closed"

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket now (idempotent); a command in flight fails with ChannelGone."""
        if not self.closed:
            self.closed = True
            self.transport.close()
        self._fail_pending(ChannelGone(self._gone_reason))

    def connection_lost(self) -> None:
        """Asterisk closed the connection (AGIEXITONHANGUP, the channel went away)."""
        if not self.closed:
            self._gone_reason = "Asterisk closed the AGI session"
        self.close()

    # -- commands --------------------------------------------------------------------------

    # The command methods are plain functions that return the reply's future to await (a
    # coroutine only where there is more to do): every await level is a frame that each
    # reply resumes, and with one short reply per command they were a tenth of the server's
    # time. Errors (the session closed, a value that cannot be sent) are raised by the call.

    def command(self, line: bytes, wait_s: float | None = None) -> Awaitable[p.Reply]:
        """Send one command line; await the result for its reply. ``511`` raises ChannelGone."""
        if self._needs_sync:
            return self._synced(line, wait_s)
        return self._send(line, wait_s)

    async def _synced(self, line: bytes, wait_s: float | None) -> p.Reply:
        await self.sync()
        return await self._send(line, wait_s)

    def _send(self, line: bytes, wait_s: float | None = None) -> asyncio.Future[p.Reply]:
        if self.closed:
            raise ChannelGone(self._gone_reason)
        pending = self._pending
        if pending is not None and not pending.done():
            raise RuntimeError("one AGI command at a time")
        loop = self._loop
        fut: asyncio.Future[p.Reply] = loop.create_future()
        self._pending = fut
        self._pending_line = line
        self.deadline = loop.time() + (wait_s or self.command_timeout)
        self.commands += 1
        self.transport.write(line)
        return fut

    def _start_sync(self) -> str:
        nonce = "cc-sync-" + secrets.token_hex(10)
        self._sync_nonce = nonce
        self._needs_sync = False
        early, self._early = self._early or [], None
        for line in early:
            self.feed_line(line)
        return nonce

    async def sync(self) -> None:
        """Discard whatever follows the environment up to the reply of a nonce only Asterisk
        can echo: lines injected by caller data can then never pass for a reply."""
        if self._needs_sync:
            await self._send(p.sync_command(self._start_sync()))
            self._log_strays()

    def _log_strays(self) -> None:
        if self.stray_lines:
            log.warning(
                "agi_stray_lines_discarded",
                extra={"kv": {"channel": self.env.uniqueid, "lines": self.stray_lines}},
            )

    async def values(self, *expressions: str, channel: str | None = None) -> list[str] | None:
        """Several dialplan expressions in one round trip, read base64-encoded; None when
        ``channel`` (another channel's name or uniqueid) does not exist."""
        if self._needs_sync and channel is None:
            nonce = self._start_sync()  # the first read re-synchronises too
            reply = await self._send(p.values_command(expressions, None, nonce))
            self._log_strays()
            return p.decode_values(reply, len(expressions), nonce)
        reply = await self.command(p.values_command(expressions, channel))
        return p.decode_values(reply, len(expressions))

    async def value(self, expression: str, channel: str | None = None) -> str | None:
        found = await self.values(expression, channel=channel)
        return found[0] if found is not None else None

    def set_variable(self, name: str, value: str) -> Awaitable[p.Reply]:
        return self.command(p.set_variable_command(name, value))

    def stream_file(self, path: str, escape_digits: str, wait_s: float) -> Awaitable[p.Reply]:
        return self.command(p.stream_file_command(path, escape_digits), wait_s)

    def wait_for_digit(self, timeout_ms: int) -> Awaitable[p.Reply]:
        line = f"WAIT FOR DIGIT {int(timeout_ms)}\n".encode()
        return self.command(line, timeout_ms / 1000 + self.command_timeout)

    def exec(self, app: str, *args: str) -> Awaitable[p.Reply]:
        return self.command(p.exec_command(app, *args))

    async def channel_status(self) -> int | None:
        return (await self.command(b"CHANNEL STATUS\n")).result

    async def answer(self) -> None:
        await self.command(b"ANSWER\n")

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command(p.command("VERBOSE", args=(message,))[:-1] + f" {level}\n".encode())

    # -- input (called by the server's protocol, for each line) ------------------------------

    def feed_line(self, line: bytes) -> None:
        if self.closed:
            return
        if self._early is not None:
            self._early.append(line)
            if len(self._early) > MAX_STRAY_LINES:
                self._gone_reason = "too many lines before the first command"
                self.close()
            return
        try:
            event = self._parser.feed(line)
            if event is None:
                return
            if self._sync_nonce is not None:
                self._while_syncing(event)
            elif isinstance(event, p.HangupNotice):
                self._hangup()
            elif isinstance(event, p.StrayLine):
                log.warning(
                    "agi_protocol_error",
                    extra={"kv": {"channel": self.env.uniqueid, "bytes": len(event.line)}},
                )
                raise p.ProtocolError("Asterisk sent a line that is no reply")
            else:
                self._deliver(event)
        except p.ProtocolError as exc:
            self._gone_reason = str(exc)
            self.close()

    def _while_syncing(self, event: p.Incoming) -> None:
        if self._sync_nonce is not None and p.is_sync_reply(event, self._sync_nonce):
            self._sync_nonce = None
            self._deliver(event)  # type: ignore[arg-type]
            return
        self.stray_lines += 1
        if self.stray_lines > MAX_STRAY_LINES:
            raise p.ProtocolError("too many stray lines before the sync reply")

    def _deliver(self, reply: p.Reply) -> None:
        fut = self._pending
        if fut is None or fut.done():
            raise p.ProtocolError(f"a reply nobody asked for: {reply.code}")
        self._pending = None
        if reply.dead_channel:
            self.hung_up = True
            fut.set_exception(ChannelGone("511 Command Not Permitted on a dead channel"))
        else:
            fut.set_result(reply)

    def _hangup(self) -> None:
        self.hung_up = True
        if self.on_hangup is not None:
            self.on_hangup(self)
        if self.close_on_hangup:
            self._gone_reason = "the channel hung up"
            self.close()

    def expire_if_late(self, now: float) -> None:
        """Called by the server's sweeper: fail a command past its deadline, and close."""
        fut = self._pending
        if fut is None or fut.done() or now < self.deadline:
            return
        fut.set_exception(CommandTimeout(f"no reply to {self._pending_line[:40]!r} in time"))
        self._gone_reason = "an AGI command timed out"
        self.close()

    def _fail_pending(self, exc: Exception) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(exc)
