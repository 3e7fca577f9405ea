"""ESL connections read into one reused buffer (esl_listener.transport): every connection of
a loop shares it, and frames cut across reads and interleaved between connections still
arrive whole and in order on the right connection."""

from __future__ import annotations

import asyncio

from esl_listener import transport
from esl_listener.connection import EslConnection


def _reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def test_connections_of_a_loop_share_one_read_buffer() -> None:
    async def main() -> None:
        first, second = transport.FrameProtocol(), transport.FrameProtocol()
        assert first.get_buffer(-1) is second.get_buffer(-1)
        assert len(first.get_buffer(-1)) == transport.READ_BUFFER_BYTES

    asyncio.run(main())


def test_frames_split_across_reads_and_connections_arrive_whole() -> None:
    """The peer writes each reply a few bytes at a time, alternating between two
    connections: each read overwrites the shared buffer, and nothing may leak between them."""

    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []
        accepted = asyncio.Event()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            if len(writers) == 2:
                accepted.set()
            await reader.read()  # until we close

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [
            EslConnection.over(await transport.open_connection("127.0.0.1", port), name=n)
            for n in ("a", "b")
        ]
        await accepted.wait()
        replies = [asyncio.ensure_future(c.send("api status")) for c in conns]
        await asyncio.sleep(0.05)
        frames = [_reply("+OK from " + "ab"[i] + " " + "x" * 300) for i in range(2)]
        for offset in range(0, max(map(len, frames)), 7):
            for writer, frame in zip(writers, frames, strict=True):
                writer.write(frame[offset : offset + 7])
                await writer.drain()
            await asyncio.sleep(0)
        got = await asyncio.wait_for(asyncio.gather(*replies), 10)
        assert [g.reply_text for g in got] == [
            "+OK from a " + "x" * 300,
            "+OK from b " + "x" * 300,
        ]
        for conn in conns:
            await conn.close()
        assert all(c.closed.is_set() for c in conns)
        server.close()

    asyncio.run(main())


async def _greets_then_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A FreeSWITCH that asks for the password, then hangs up."""
    writer.write(b"Content-Type: auth/request\n\n")
    await writer.drain()
    writer.close()


def test_the_peer_closing_closes_the_connection() -> None:
    async def main() -> None:
        server = await asyncio.start_server(_greets_then_closes, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = EslConnection.over(await transport.open_connection("127.0.0.1", port))
        assert (await conn.greeting(5)).content_type == "auth/request"
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.close_reason == "closed by FreeSWITCH"
        await conn.close()
        server.close()

    asyncio.run(main())


def test_a_closed_connection_is_freed_without_the_cyclic_collector() -> None:
    """Python 3.11's transport holds a bound method of itself after it closed; unless the
    protocol drops it, every closed ESL connection waits for the collector's full pass
    (agi.server.release_transport says why that matters)."""
    import gc
    import weakref

    refs: list[weakref.ref[asyncio.BaseTransport]] = []

    async def main() -> None:
        server = await asyncio.start_server(_greets_then_closes, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        protocol = await transport.open_connection("127.0.0.1", port)
        assert protocol.transport is not None
        refs.append(weakref.ref(protocol.transport))
        conn = EslConnection.over(protocol)
        await asyncio.wait_for(conn.closed.wait(), 5)
        await conn.close()
        del conn, protocol
        server.close()
        await server.wait_closed()

    gc.disable()
    try:
        asyncio.run(main())
        assert refs[0]() is None, gc.get_referrers(refs[0]())
    finally:
        gc.enable()
