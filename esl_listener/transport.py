"""ESL sockets read into one reused buffer, as the FastAGI server reads (``agi/server.py``).

A plain ``asyncio.Protocol`` (or a ``StreamReader``, which is one) has asyncio allocate a fresh
256 KiB object for every read; most ESL reads are one short reply or event. A
:class:`FrameProtocol` is a ``BufferedProtocol``: the socket is read into a buffer shared by
every ESL connection of the event loop, and :meth:`FrameProtocol.buffer_updated` hands it to
the connection's frame parser, which copies what it keeps before returning, so the next read
may overwrite it. :class:`TransportWriter` gives :class:`esl_listener.connection.EslConnection`
the four writer methods it uses (``write``, ``drain``, ``close``, ``wait_closed``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

READ_BUFFER_BYTES = 65536
_buffers: dict[asyncio.AbstractEventLoop, memoryview] = {}


class FrameSink(Protocol):
    """What a :class:`FrameProtocol` feeds (an :class:`esl_listener.connection.EslConnection`)."""

    def data_received(self, data: bytes | memoryview) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


def _loop_buffer() -> memoryview:
    """The read buffer of the running loop (one loop reads one socket at a time)."""
    loop = asyncio.get_running_loop()
    buffer = _buffers.get(loop)
    if buffer is None:
        if len(_buffers) > 8:  # loops of finished asyncio.run()s (tests)
            for old in [lp for lp in _buffers if lp.is_closed()]:
                del _buffers[old]
        buffer = _buffers[loop] = memoryview(bytearray(READ_BUFFER_BYTES))
    return buffer


class FrameProtocol(asyncio.BufferedProtocol):
    """Feeds one connection (:meth:`attach`); ``on_made(protocol)`` runs once
    the transport is there (a server's new connection)."""

    def __init__(self, on_made: Callable[[FrameProtocol], object] | None = None) -> None:
        self.on_made = on_made
        self.conn: FrameSink | None = None
        self._early = bytearray()  # what arrived before a connection was attached
        self.transport: asyncio.Transport | None = None
        self._buffer = _loop_buffer()
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made(self)

    def attach(self, conn: FrameSink) -> None:
        self.conn = conn
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            conn.data_received(early)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.conn is not None:
            self.conn.data_received(self._buffer[:nbytes])
        else:
            self._early += self._buffer[:nbytes]

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        # the cycles a closed connection would leave for the collector's full pass, which
        # walks every call in progress (agi.server.release_transport says more; the adapters
        # never import each other, so the lines are here too): Python 3.11's transport keeps
        # a bound method of itself, and the connection and this protocol hold each other
        if getattr(self.transport, "_read_ready_cb", None) is not None:
            self.transport._read_ready_cb = None  # type: ignore[union-attr]
        if not self.lost.done():
            self.lost.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the ESL connection is closed")
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class TransportWriter:
    """What :class:`EslConnection` writes with, over a :class:`FrameProtocol`'s transport."""

    def __init__(self, protocol: FrameProtocol) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the ESL connection is closed")
        transport.write(data)

    async def drain(self) -> None:
        await self.protocol.drain()

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self.protocol.lost


async def open_connection(host: str, port: int) -> FrameProtocol:
    """A TCP connection to an ESL server (FreeSWITCH's event socket)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(FrameProtocol, host, port)
    return protocol


async def start_server(
    on_connection: Callable[[FrameProtocol], object], host: str, port: int, backlog: int
) -> asyncio.base_events.Server:
    """Listen for FreeSWITCH's outbound sockets; ``on_connection(protocol)`` runs for each."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: FrameProtocol(on_connection), host, port, backlog=backlog, reuse_address=True
    )
