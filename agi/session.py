"""One FastAGI session: commands out, replies in, ``HANGUP`` noticed wherever it comes.

A reader task owns the socket's input. It hands each reply to the one command waiting for it
and treats ``HANGUP`` as what it is, a notification: it marks the session hung up and, by
default, closes the socket at once, because Asterisk keeps the channel (and its recording)
open until we do (capture ``linger_after_hangup``). A command in flight then fails with
:class:`ChannelGone`, as does any command answered ``511`` (dead channel).

Every command has a timeout (``call_later`` on its future: cheap enough for thousands of
sessions); a command that times out closes the session, since a late reply would otherwise
be taken for the answer to the next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: p.AgiEnvironment,
        *,
        command_timeout: float = 10.0,
        close_on_hangup: bool = True,
        on_hangup: Callable[[AgiSession], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.env = env
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
        self._reader_task: asyncio.Task[None] | None = None
        self._gone_reason = "the session is closed"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    def close(self) -> None:
        """Close the socket now (idempotent); a command in flight fails with ChannelGone."""
        if not self.closed:
            self.closed = True
            self.writer.close()
        self._fail_pending(ChannelGone(self._gone_reason))

    async def aclose(self, wait_s: float = 2.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self.writer.wait_closed(), wait_s)
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()

    # -- commands --------------------------------------------------------------------------

    async def command(self, line: bytes, wait_s: float | None = None) -> p.Reply:
        """Send one command line and return its reply. ``511`` raises ChannelGone."""
        if self.closed:
            raise ChannelGone(self._gone_reason)
        if self._pending is not None:
            raise RuntimeError("one AGI command at a time")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[p.Reply] = loop.create_future()
        self._pending = fut
        timer = loop.call_later(wait_s or self.command_timeout, self._expire, fut, line)
        self.commands += 1
        try:
            self.writer.write(line)
            reply = await fut
        finally:
            timer.cancel()
            self._pending = None
        if reply.dead_channel:
            self.hung_up = True
            raise ChannelGone("511 Command Not Permitted on a dead channel")
        return reply

    async def sync(self) -> None:
        """Discard whatever follows the environment up to the reply of a nonce only Asterisk
        can echo: lines injected by caller data can then never pass for a reply."""
        nonce = "cc-sync-" + secrets.token_hex(10)
        self._sync_nonce = nonce
        await self.command(p.sync_command(nonce))
        if self.stray_lines:
            log.warning(
                "agi_stray_lines_discarded",
                extra={"kv": {"channel": self.env.uniqueid, "lines": self.stray_lines}},
            )

    async def values(self, *expressions: str, channel: str | None = None) -> list[str] | None:
        """Several dialplan expressions in one round trip, read base64-encoded; None when
        ``channel`` (another channel's name or uniqueid) does not exist."""
        reply = await self.command(p.values_command(expressions, channel))
        return p.decode_values(reply, len(expressions))

    async def value(self, expression: str, channel: str | None = None) -> str | None:
        found = await self.values(expression, channel=channel)
        return found[0] if found is not None else None

    async def set_variable(self, name: str, value: str) -> None:
        await self.command(p.set_variable_command(name, value))

    async def stream_file(self, path: str, escape_digits: str, wait_s: float) -> p.Reply:
        return await self.command(p.stream_file_command(path, escape_digits), wait_s)

    async def wait_for_digit(self, timeout_ms: int) -> p.Reply:
        line = f"WAIT FOR DIGIT {int(timeout_ms)}\n".encode()
        return await self.command(line, timeout_ms / 1000 + self.command_timeout)

    async def exec(self, app: str, *args: str) -> p.Reply:
        return await self.command(p.exec_command(app, *args))

    async def channel_status(self) -> int | None:
        return (await self.command(b"CHANNEL STATUS\n")).result

    async def answer(self) -> None:
        await self.command(b"ANSWER\n")

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command(p.command("VERBOSE", args=(message,))[:-1] + f" {level}\n".encode())

    # -- input -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "Asterisk closed the AGI session"
        try:
            while True:
                line = await self.reader.readline()
                if not line.endswith(b"\n"):
                    break  # EOF (possibly after a partial line)
                event = self._parser.feed(line)
                if event is None:
                    continue
                if self._sync_nonce is not None:
                    self._while_syncing(event)
                elif isinstance(event, p.HangupNotice):
                    self._hangup()
                elif isinstance(event, p.StrayLine):
                    reason = "Asterisk sent a line that is no reply"
                    log.warning(
                        "agi_protocol_error",
                        extra={"kv": {"channel": self.env.uniqueid, "bytes": len(event.line)}},
                    )
                    break
                else:
                    self._deliver(event)
        except (ConnectionError, ValueError, p.ProtocolError) as exc:
            reason = f"AGI input failed: {type(exc).__name__}"
        finally:
            self._gone_reason = reason
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
        if self._pending is None or self._pending.done():
            raise p.ProtocolError(f"a reply nobody asked for: {reply.code}")
        self._pending.set_result(reply)

    def _hangup(self) -> None:
        self.hung_up = True
        if self.on_hangup is not None:
            self.on_hangup(self)
        if self.close_on_hangup:
            self._gone_reason = "the channel hung up"
            self.close()

    def _expire(self, fut: asyncio.Future[p.Reply], line: bytes) -> None:
        if fut.done():
            return
        fut.set_exception(CommandTimeout(f"no reply to {line[:40]!r} in time"))
        self._gone_reason = "an AGI command timed out"
        self.close()

    def _fail_pending(self, exc: Exception) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(exc)
