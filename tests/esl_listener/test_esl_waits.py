"""How long an ESL connection waits, and what a wait that runs out leaves behind.

A reply that does not come leaves the stream out of step: the command fails with
:class:`CommandTimeout` and the connection is closed. A completion (an ``execute``'s
CHANNEL_EXECUTE_COMPLETE, a ``bgapi``'s BACKGROUND_JOB) that does not come fails that command
only: the connection stays, and a completion arriving late is dropped. A waiter cancelled from
outside is cancelled, and the connection still serves the next command.
"""

from __future__ import annotations

import asyncio

import pytest

from esl_listener.connection import CommandTimeout, ConnectionClosed, EslConnection

REPLY_OK = b"Content-Type: command/reply\nReply-Text: +OK\n\n"


class _Writer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None: ...


def _event(*headers: str) -> bytes:
    body = ("\n".join(headers) + "\n\n").encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body


def _conn(writer: _Writer) -> EslConnection:
    return EslConnection(None, writer, new_uuid=iter(["a-1", "a-2", "a-3"]).__next__)  # type: ignore[arg-type]


def test_a_reply_that_does_not_come_closes_the_connection() -> None:
    async def scenario() -> None:
        writer = _Writer()
        conn = _conn(writer)
        with pytest.raises(CommandTimeout, match=r"no reply within 0\.05s"):
            await conn.send("api status", timeout_s=0.05)
        assert conn.closed.is_set() and writer.closed
        assert conn.close_reason == "no reply within 0.05s"
        with pytest.raises(ConnectionClosed):
            await conn.send("api status")

    asyncio.run(scenario())


def test_a_completion_that_does_not_come_fails_that_command_only() -> None:
    async def scenario() -> None:
        writer = _Writer()
        conn = _conn(writer)
        running = asyncio.create_task(conn.execute("answer", timeout_s=0.05))
        await asyncio.sleep(0)
        conn.data_received(REPLY_OK)
        with pytest.raises(CommandTimeout, match=r"no answer to complete within 0\.05s"):
            await running
        assert not conn.closed.is_set()
        # its completion, late: dropped, not matched to the next execute
        conn.data_received(_event("Event-Name: CHANNEL_EXECUTE_COMPLETE", "Application-UUID: a-1"))
        running = asyncio.create_task(conn.execute("playback", "x.wav", timeout_s=5))
        await asyncio.sleep(0)
        conn.data_received(REPLY_OK)
        await asyncio.sleep(0.01)
        assert not running.done()
        conn.data_received(
            _event(
                "Event-Name: CHANNEL_EXECUTE_COMPLETE",
                "Application-UUID: a-2",
                "Application-Response: FILE PLAYED",
            )
        )
        done = await asyncio.wait_for(running, 5)
        assert done.get("Application-Response") == "FILE PLAYED"
        assert b"Event-UUID: a-2" in writer.sent[-1]

    asyncio.run(scenario())


def test_a_job_that_does_not_finish_fails_that_bgapi_only() -> None:
    async def scenario() -> None:
        conn = _conn(_Writer())
        running = asyncio.create_task(conn.bgapi("uuid_record x start y", timeout_s=0.05))
        await asyncio.sleep(0)
        conn.data_received(b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: a-1\n\n")
        with pytest.raises(CommandTimeout, match=r"no job a-1 within 0\.05s"):
            await running
        assert not conn.closed.is_set()
        sending = asyncio.create_task(conn.api("status", timeout_s=5))
        await asyncio.sleep(0)
        conn.data_received(b"Content-Type: api/response\nContent-Length: 3\n\nUP!")
        assert (await asyncio.wait_for(sending, 5)).text == "UP!"

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_connection_serving() -> None:
    async def scenario() -> None:
        conn = _conn(_Writer())
        running = asyncio.create_task(conn.execute("answer", timeout_s=5))
        await asyncio.sleep(0)
        conn.data_received(REPLY_OK)
        await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        conn.data_received(_event("Event-Name: CHANNEL_EXECUTE_COMPLETE", "Application-UUID: a-1"))
        sending = asyncio.create_task(conn.api("status", timeout_s=5))
        await asyncio.sleep(0)
        conn.data_received(b"Content-Type: api/response\nContent-Length: 3\n\n+OK")
        assert (await asyncio.wait_for(sending, 5)).text == "+OK"
        assert not conn.closed.is_set()

    asyncio.run(scenario())


def test_the_greeting_that_does_not_come_times_out() -> None:
    async def scenario() -> None:
        conn = _conn(_Writer())
        with pytest.raises(CommandTimeout, match=r"no greeting within 0\.05s"):
            await conn.greeting(0.05)
        conn.data_received(b"Content-Type: auth/request\n\n")  # late: no harm
        assert not conn.closed.is_set()

    asyncio.run(scenario())
