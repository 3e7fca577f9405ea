"""Our asyncio FastAGI server.

Not panoramisk's ``fast_agi``: against Asterisk it spins the event loop when a client
disconnects before the blank line (``reader.read`` returns ``b''`` forever in its loop), and it
reads the unsolicited ``HANGUP`` as the reply to the next command, so every later result is
off by one. Here the environment is read line by line with a size limit and a deadline, an
early EOF ends the session, and :class:`agi.session.AgiSession` treats ``HANGUP`` as a
notification.

A session beyond ``max_sessions`` is closed at once, before its environment: Asterisk then
reports ``AGISTATUS=SUCCESS`` with nothing set, which the shipped dialplan maps to
``CONSENT_STATUS=unavailable`` — the call goes on, unrecorded (capture ``s4b``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agi import protocol as p
from agi.session import AgiSession, ChannelGone, CommandTimeout

log = logging.getLogger("callconsent.agi")

Handler = Callable[[AgiSession], Awaitable[None]]
Router = Callable[[p.AgiEnvironment], "Handler | None"]


class EnvironmentIncomplete(p.ProtocolError):
    """The connection ended before the environment's blank line."""


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 5000
    env_timeout_s: float = 5.0
    env_max_bytes: int = 16384
    command_timeout_s: float = 10.0
    backlog: int = 4096


async def read_environment(
    reader: asyncio.StreamReader, max_bytes: int = 16384
) -> p.AgiEnvironment:
    """Read up to the blank line; EOF first raises :class:`EnvironmentIncomplete`."""
    env = p.EnvironmentReader(max_bytes=max_bytes)
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than the stream's limit
            raise p.EnvironmentTooLarge("an AGI environment line is too long") from None
        if not line.endswith(b"\n"):
            raise EnvironmentIncomplete(
                f"Asterisk closed the AGI socket before the environment ended "
                f"(got {len(env.lines)} of ~23 lines)"
            )
        if env.feed(line):
            return p.parse_environment(env.lines)


class FastAgiServer:
    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 4573,
        limits: ServerLimits | None = None,
        *,
        close_on_hangup: bool = True,
        sync: bool = True,
    ) -> None:
        self.router = router
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.close_on_hangup = close_on_hangup
        self.sync = sync
        self.sessions: set[AgiSession] = set()
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=self.limits.backlog, limit=65536
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening", extra={"kv": {"component": "fastagi", "address": self.address}})

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; let running sessions finish for ``grace`` seconds, then close them
        (Asterisk continues the dialplan; the wrapper maps an undecided call to unavailable)."""
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for session in list(self.sessions):
                session.close()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.limits.max_sessions:
            self.refused += 1
            log.warning("agi_session_refused", extra={"kv": {"limit": self.limits.max_sessions}})
            writer.close()
            return
        try:
            env = await asyncio.wait_for(
                read_environment(reader, self.limits.env_max_bytes), self.limits.env_timeout_s
            )
        except (TimeoutError, p.ProtocolError, ConnectionError) as exc:
            why = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("agi_environment_failed", extra={"kv": {"error": why}})
            writer.close()
            return
        session = AgiSession(
            reader,
            writer,
            env,
            command_timeout=self.limits.command_timeout_s,
            close_on_hangup=self.close_on_hangup,
        )
        self.sessions.add(session)
        session.start()
        try:
            await self._run(session)
        finally:
            self.sessions.discard(session)
            await session.aclose()

    async def _run(self, session: AgiSession) -> None:
        env = session.env
        kv = {"channel": env.uniqueid, "script": env.script[:80]}
        if env.hostile:
            log.warning("agi_environment_anomaly", extra={"kv": {**kv, "why": env.anomalies[0]}})
        handler = self.router(env)
        if handler is None:
            log.warning("agi_no_route", extra={"kv": kv})
            return
        try:
            if self.sync:
                await session.sync()
            await handler(session)
        except ChannelGone as exc:
            log.debug("agi_channel_gone", extra={"kv": {**kv, "why": str(exc)}})
        except CommandTimeout as exc:
            log.warning("agi_command_timeout", extra={"kv": {**kv, "why": str(exc)}})
        except (p.ProtocolError, p.UnsafeArgument) as exc:
            log.warning("agi_session_failed", extra={"kv": {**kv, "why": str(exc)}})
        except Exception:
            log.exception("agi_handler_crashed", extra={"kv": kv})
