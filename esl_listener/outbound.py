"""The outbound-socket server: FreeSWITCH's ``socket`` application connects here, one TCP
connection per channel, and we drive that channel until we ``exit``.

The server only accepts, says ``connect`` and hands the session to a handler; what a session
does (the consent dialogue) lives in :mod:`esl_listener.consent`. Listening on 127.0.0.1 is the
default and what the shipped dialplan dials (``socket 127.0.0.1:8084/consent/<campaign>``):
whoever can connect here can impersonate a channel, so it must never face a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from esl_listener import protocol as p
from esl_listener import transport
from esl_listener.connection import DEFAULT_COMMAND_TIMEOUT, EslConnection, EslError

log = logging.getLogger("callconsent.esl.outbound")

SessionHandler = Callable[[EslConnection, p.Frame], Awaitable[None]]


class OutboundServer:
    """Accepts outbound-socket sessions and runs ``handler(conn, channel_data)`` for each."""

    def __init__(
        self,
        handler: SessionHandler,
        host: str = "127.0.0.1",
        port: int = 8084,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_header_bytes: int = p.DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = p.DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.command_timeout = command_timeout
        self._limits = (max_header_bytes, max_body_bytes)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.sessions_started = 0

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._server = await transport.start_server(self._accept, self.host, self.port, 4096)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "listening",
            extra={"kv": {"component": "esl-outbound", "addr": f"{self.host}:{self.port}"}},
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; give running dialogues ``grace_s`` to finish, then cut them (the
        dialplan's fallback after ``socket`` then marks those calls ``unavailable``)."""
        if self._server is not None:
            self._server.close()
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, protocol: transport.FrameProtocol) -> None:
        task = asyncio.get_running_loop().create_task(self._session(protocol))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _session(self, protocol: transport.FrameProtocol) -> None:
        self.sessions_started += 1
        conn = EslConnection.over(
            protocol,
            name=f"outbound-{self.sessions_started}",
            command_timeout=self.command_timeout,
            max_header_bytes=self._limits[0],
            max_body_bytes=self._limits[1],
        )
        try:
            channel = await conn.connect()
            await self.handler(conn, channel)
        except EslError as exc:
            log.warning(
                "outbound_session_failed", extra={"kv": {"conn": conn.name, "error": str(exc)}}
            )
        except asyncio.CancelledError:
            log.warning("outbound_session_cut", extra={"kv": {"conn": conn.name}})
        except Exception:
            log.exception("outbound_session_crashed", extra={"kv": {"conn": conn.name}})
        finally:
            with contextlib.suppress(Exception):
                await conn.close("session over")
