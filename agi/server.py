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
from recorder.store import outage

log = logging.getLogger("callconsent.agi")

Handler = Callable[[AgiSession], Awaitable[None]]
SWEEP_S = 0.2  # how often command deadlines are checked
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
    max_line: int = 65536


def release_transport(transport: asyncio.BaseTransport | None) -> None:
    """Python 3.11's socket transport keeps a bound method of itself (``_read_ready_cb``)
    after it has closed: a reference cycle that only the cyclic collector's full pass frees,
    so every closed connection (its transport, socket and extras) waited for one, and with
    thousands of calls in progress that pass stops the event loop for 50-90 ms
    (docs/performance.md). Python 3.12 drops the method in ``close()`` (CPython gh-100348);
    this does the same once the connection is lost, when the transport reads no more. An
    asyncio private attribute: no public call breaks the cycle; harmless where it is absent."""
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]


class _AgiConnection(asyncio.BufferedProtocol):
    """One TCP connection: lines are cut as bytes arrive (no reader task per session) and
    fed first to the environment reader, then to the session.

    A buffered protocol: the socket is read into the server's one buffer, which
    :meth:`buffer_updated` empties before it returns. A plain ``Protocol`` has asyncio
    allocate a fresh 256 KiB object for every read, a quarter of the server's time when each
    read is one short AGI reply."""

    def __init__(self, server: FastAgiServer) -> None:
        self.server = server
        self._buffer = server._read_buffer
        self.limits = server.limits
        # until the blank line; dropped then, as the session holds what it needs (every
        # object a live session keeps is one more for the garbage collector to walk)
        self.env: p.EnvironmentReader | None = p.EnvironmentReader(
            max_bytes=self.limits.env_max_bytes
        )
        self.session: AgiSession | None = None
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # refused, failed, or closed by us before a session existed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if server.connections >= self.limits.max_sessions:
            server.refused += 1
            log.warning("agi_session_refused", extra={"kv": {"limit": self.limits.max_sessions}})
            self._fail(None)
            return
        server.connections += 1
        self._timer = server.loop.call_later(self.limits.env_timeout_s, self._fail, "timeout")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self.limits.max_line:
            self._fail("a line is too long")
            return
        env = self.env
        if env is not None:
            try:
                blank = env.feed(lines)
            except p.EnvironmentTooLarge as exc:
                self._fail(str(exc))
                return
            if blank is None:
                return
            self.env = None
            self._start(p.parse_environment(env.lines))
            lines = lines[blank + 1 :]  # what came after the blank line: the session's
        session = self.session
        assert session is not None
        for line in lines:
            session.feed_line(line + b"\n")
            if session.closed:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        release_transport(self.transport)
        if self._timer is not None:
            self._timer.cancel()
        if self.session is not None:
            self.session.connection_lost()
        elif not self._done and self.env is not None:
            why = EnvironmentIncomplete(
                "Asterisk closed the AGI socket before the environment ended "
                f"(got {len(self.env.lines)} of ~23 lines)"
            )
            log.warning("agi_environment_failed", extra={"kv": {"error": str(why)}})
        if not self._done or self.session is not None:
            self.server.connections -= 1

    def _fail(self, why: str | None) -> None:
        if why is not None:
            log.warning("agi_environment_failed", extra={"kv": {"error": why}})
            self.server.connections -= 1
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        assert self.transport is not None
        self.transport.close()

    def _start(self, env: p.AgiEnvironment) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self.transport is not None
        session = AgiSession(
            self.transport,
            env,
            command_timeout=self.limits.command_timeout_s,
            close_on_hangup=self.server.close_on_hangup,
            expect_sync=self.server.sync,
        )
        self.session = session
        self.server._launch(session)


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
        # shared by this server's connections: the loop reads one socket at a time, and each
        # read is consumed before the next (see _AgiConnection)
        self._read_buffer = memoryview(bytearray(65536))
        self.close_on_hangup = close_on_hangup
        self.sync = sync
        # each running session and its task (the loop holds tasks weakly); a session leaves
        # when its task ends, so no done callback is needed per session
        self.sessions: dict[AgiSession, asyncio.Task[None]] = {}
        self.connections = 0
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self.loop: asyncio.AbstractEventLoop  # set by start(); the connections' callbacks use it
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AgiConnection(self), self.host, self.port, backlog=self.limits.backlog
        )
        self._sweeper = loop.create_task(self._sweep())
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
        if self.sessions:
            _done, pending = await asyncio.wait(set(self.sessions.values()), timeout=grace)
            for session in list(self.sessions):
                session.close()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        """Per-command timeouts, checked a few times a second for every session at once."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for session in list(self.sessions):
                session.expire_if_late(now)

    def _launch(self, session: AgiSession) -> None:
        self.sessions[session] = self.loop.create_task(self._serve(session))

    async def _serve(self, session: AgiSession) -> None:
        """One session's task. Kept to one frame above the handler: each reply resumes them
        all."""
        env = session.env
        kv = {"channel": env.uniqueid, "script": env.script[:80]}
        try:
            if env.hostile:
                why = env.anomalies[0]
                log.warning("agi_environment_anomaly", extra={"kv": {**kv, "why": why}})
            handler = self.router(env)
            if handler is None:
                log.warning("agi_no_route", extra={"kv": kv})
                return
            await handler(session)
        except ChannelGone as exc:
            log.debug("agi_channel_gone", extra={"kv": {**kv, "why": str(exc)}})
        except CommandTimeout as exc:
            log.warning("agi_command_timeout", extra={"kv": {**kv, "why": str(exc)}})
        except (p.ProtocolError, p.UnsafeArgument) as exc:
            log.warning("agi_session_failed", extra={"kv": {**kv, "why": str(exc)}})
        except Exception as exc:
            if outage.is_unavailable(exc):  # said once for all calls, not per call
                outage.OUTAGE.report(exc, f"channel {env.uniqueid}")
            else:
                log.exception("agi_handler_crashed", extra={"kv": kv})
        finally:
            self.sessions.pop(session, None)
            session.close()
