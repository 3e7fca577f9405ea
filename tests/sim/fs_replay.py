"""A FreeSWITCH peer that replays one captured ESL session over a real socket, byte for byte.

It plays FreeSWITCH's side of :class:`fs_captures.Capture`: every ``rx`` step is written as
captured; every ``tx`` step is *expected* from the client under test, byte for byte, before the
replay goes on. So the client must produce exactly the bytes the capture's client sent, and it
gets exactly the frames FreeSWITCH sent, in the captured order (events interleaved with replies
as they were). Like FreeSWITCH, the peer closes the socket after a final ``disconnect`` notice
(or an ACL rejection); otherwise it waits for the client to close.

Outbound-socket captures: the peer *dials* the server under test (FreeSWITCH's ``socket`` app
connects to us). Inbound captures: the peer *listens* and greets the client with the captured
``auth/request``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import fs_captures as fc
from fs_captures import Capture

from esl_listener import protocol as p
from esl_listener.protocol import FrameParser


@dataclass
class ReplayPeer:
    capture: Capture
    timeout: float = 5.0
    received: list[bytes] = field(default_factory=list)
    mismatch: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    steps_done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def closes_after_last_frame(self) -> bool:
        last = self.capture.steps[-1]
        if last.direction != "rx":
            return False
        frames = FrameParser().feed(last.data)
        final = frames[-1]
        return final.content_type == "text/rude-rejection" or (
            final.content_type == "text/disconnect-notice"
            and final.get("Content-Disposition") != "linger"
        )

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for step in self.capture.steps:
                if step.direction == "rx":
                    writer.write(step.data)
                    await writer.drain()
                    continue
                try:
                    got = await asyncio.wait_for(reader.readexactly(len(step.data)), self.timeout)
                except (asyncio.IncompleteReadError, TimeoutError) as exc:
                    partial = getattr(exc, "partial", b"")
                    self.mismatch = f"expected {step.data!r}, got {partial!r} then nothing"
                    return
                self.received.append(got)
                if got != step.data:
                    self.mismatch = f"expected {step.data!r}, got {got!r}"
                    return
            self.steps_done.set()
            if not self.closes_after_last_frame:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(), self.timeout)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.done.set()

    async def dial(self, host: str, port: int) -> None:
        """Outbound socket: connect to the server under test, as FreeSWITCH's socket app does."""
        reader, writer = await asyncio.open_connection(host, port)
        await self.run(reader, writer)

    async def listen(self) -> tuple[asyncio.base_events.Server, int]:
        """Inbound ESL: listen on an ephemeral port and serve one client."""
        server = await asyncio.start_server(self.run, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]


def expected(capture: fc.Capture) -> tuple[list[p.Frame | None], list[p.Event], int]:
    """For each tx, the reply frame FreeSWITCH sent for it; all events; all frames."""
    replies: list[p.Frame | None] = []
    events: list[p.Event] = []
    pending: deque[int] = deque()
    total = 0
    for step in capture.steps:
        if step.direction == "tx":
            replies.append(None)
            pending.append(len(replies) - 1)
            continue
        for frame in p.FrameParser().feed(step.data):
            total += 1
            if frame.content_type in ("command/reply", "api/response") and pending:
                replies[pending.popleft()] = frame
            elif frame.content_type.startswith("text/event-"):
                events.append(p.event_from_frame(frame))
    return replies, events, total
