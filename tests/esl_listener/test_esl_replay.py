"""Every captured FreeSWITCH session, replayed over a real socket against our ESL connection.

For each capture (``tests/fixtures/freeswitch``), a :class:`fs_replay.ReplayPeer` plays
FreeSWITCH byte for byte while our :class:`EslConnection` issues the commands the capture's
client issued, through our own API (``connect``, ``execute``, ``api``, ``bgapi``, ``send``). The
test fails if our bytes differ from the captured ones by a single byte, if a reply is matched to
the wrong command, if an ``execute`` is matched to the wrong CHANNEL_EXECUTE_COMPLETE, or if an
event decodes differently from what the capture's own log says it contained.
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import re
from collections import deque

import fs_captures as fc
import pytest
from fs_replay import ReplayPeer, expected

from esl_listener import protocol as p
from esl_listener.connection import ApiReply, AuthFailed, EslConnection, open_inbound

_EVENT_SUMMARY = re.compile(r"<<< EVENT(?:\(\w+\))? (?P<name>\S+) (?P<dict>\{.*\})$")
ACL_REJECT = "s5c_esl_acl_reject/inbound-acl-reject"
WRONG_PASSWORD = "s5_esl_least_privilege/inbound-userauth-wrongpw"


def _tx_headers(tx: bytes) -> tuple[str, list[tuple[str, str]]]:
    first, *lines = tx.decode().rstrip("\n").split("\n")
    return first, [tuple(line.split(": ", 1)) for line in lines]  # type: ignore[misc]


def _call(conn: EslConnection, tx: bytes):  # type: ignore[no-untyped-def]
    """Our API call that must produce exactly these captured bytes."""
    first, headers = _tx_headers(tx)
    if first == "connect":
        return conn.connect()
    if first.startswith("sendmsg"):
        fields = dict(headers)
        uuid = first[len("sendmsg ") :] or None
        if fields.get("call-command") == "execute" and "Event-UUID" in fields:
            return conn.execute(
                fields["execute-app-name"], fields.get("execute-app-arg"), uuid=uuid, timeout_s=30
            )
        return conn.send_raw(p.sendmsg(headers, uuid))
    if first.startswith("api "):
        return conn.api(first[4:])
    if first.startswith("bgapi "):
        return conn.bgapi(first[6:], name_job=False)
    assert not headers, tx
    return conn.send(first)


def _summaries(name: str) -> list[tuple[str, dict[str, str]]]:
    """What the capture's own log says each event contained (decoded by another program)."""
    path = (
        fc.FIXTURES / "bridge" / f"{name}.log.gz"
        if "/" in name
        else fc.FIXTURES / "outbound" / f"{name}.log.gz"
    )
    found = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        if m := _EVENT_SUMMARY.search(line):
            found.append((m["name"], ast.literal_eval(m["dict"])))
    return found


async def _replay(capture: fc.Capture) -> tuple[ReplayPeer, EslConnection, list, list[p.Event]]:
    event_uuids = deque(
        dict(_tx_headers(tx)[1])["Event-UUID"]
        for tx in capture.tx
        if tx.startswith(b"sendmsg") and b"\nEvent-UUID: " in tx
    )
    peer = ReplayPeer(capture)
    seen: list[p.Event] = []
    ready: asyncio.Future[EslConnection] = asyncio.get_running_loop().create_future()

    def attach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = EslConnection(reader, writer, name=capture.name, new_uuid=event_uuids.popleft)
        conn.add_listener(seen.append)
        ready.set_result(conn)

    if capture.is_inbound:
        server, port = await peer.listen()
        attach(*await asyncio.open_connection("127.0.0.1", port))
    else:
        server = await asyncio.start_server(attach, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        asyncio.get_running_loop().create_task(peer.dial("127.0.0.1", port))
    conn = await asyncio.wait_for(ready, 5)
    if capture.is_inbound:
        await conn.greeting()
    tasks = []
    for tx in capture.tx:
        tasks.append(asyncio.create_task(_call(conn, tx)))
        await asyncio.sleep(0)  # it takes the command lock now, in the captured order
    _, _, total = expected(capture)
    await asyncio.wait_for(peer.steps_done.wait(), 10)
    while conn.frames_received < total and not conn.closed.is_set():  # noqa: ASYNC110 - polls a counter
        await asyncio.sleep(0.01)
    await conn.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait_for(peer.done.wait(), 10)
    server.close()
    return peer, conn, results, seen


REPLAYED = [n for n in fc.all_names() if n not in (ACL_REJECT,)]


@pytest.mark.parametrize("name", REPLAYED)
def test_capture_replays_byte_for_byte(name: str) -> None:
    capture = fc.load(name)
    peer, conn, results, seen = asyncio.run(_replay(capture))
    assert peer.mismatch is None, peer.mismatch
    assert peer.received == capture.tx  # every byte we sent is what the capture's client sent
    replies, events, _ = expected(capture)
    # events arrive complete and in the captured order
    assert [(e.name, e.unique_id) for e in seen] == [(e.name, e.unique_id) for e in events]
    for tx, reply, result in zip(capture.tx, replies, results, strict=True):
        if isinstance(result, ApiReply):
            assert reply is not None
            want = reply.text if reply.content_type == "api/response" else reply.reply_text
            assert result.text == want
        elif isinstance(result, p.Frame):
            assert result == reply, tx
        elif isinstance(result, p.Event):  # an execute: completed by ITS Application-UUID
            assert result.name == "CHANNEL_EXECUTE_COMPLETE"
            assert result.get("Application-UUID") == dict(_tx_headers(tx)[1])["Event-UUID"]
    completed = {e.get("Application-UUID") for e in events if e.name == "CHANNEL_EXECUTE_COMPLETE"}
    for tx, result in zip(capture.tx, results, strict=True):
        if tx.startswith(b"sendmsg") and b"Event-UUID" in tx:
            uuid = dict(_tx_headers(tx)[1])["Event-UUID"]
            assert isinstance(result, p.Event) == (uuid in completed), (tx, result)
    notices = [
        f for s in capture.steps if s.direction == "rx" for f in p.FrameParser().feed(s.data)
    ]
    assert len(conn.disconnect_notices) == sum(
        f.content_type == "text/disconnect-notice" for f in notices
    )


@pytest.mark.parametrize("name", [n for n in REPLAYED if not n.startswith("inbound-")])
def test_events_decode_as_the_capture_log_says(name: str) -> None:
    """URL-decoding and header order checked against the summaries another program wrote."""
    _, events, _ = expected(fc.load(name))
    # the capture tool did not summarise the two system events (they belong to no channel)
    events = [e for e in events if e.name not in ("HEARTBEAT", "RE_SCHEDULE")]
    summaries = _summaries(name)
    assert len(summaries) == len(events)
    for event, (label, fields) in zip(events, summaries, strict=True):
        # a COMMAND event repeats Event-Name (PRIVATE_COMMAND) further down; the capture tool
        # kept the last, we keep the first as libesl's esl_event_get_header does
        labels = {label.split("/")[0]} | ({"COMMAND"} if label == "PRIVATE_COMMAND" else set())
        assert event.name in labels
        for key, value in fields.items():
            assert event.get(key) == value, (label, key)


def test_connect_reply_is_a_block_of_channel_headers() -> None:
    frame = p.FrameParser().feed(fc.load("accept_record_session").steps[1].data)[0]
    assert frame.content_type == "command/reply"
    assert "Content-Length" not in frame.headers
    assert len(frame.headers) == 110
    assert list(frame.headers)[-4:] == ["Content-Type", "Reply-Text", "Socket-Mode", "Control"]
    assert frame.get("Reply-Text") == "+OK\n" and frame.reply_text == "+OK"
    assert frame.get("Channel-Call-UUID") == "bfd9fadb-33c5-469f-9ffc-6bc94fd47352"
    assert frame.get("variable_current_application_data") == "127.0.0.1:8084 async full"


def test_acl_rejection_is_reported_as_such() -> None:
    async def scenario() -> None:
        peer = ReplayPeer(fc.load(ACL_REJECT))
        server, port = await peer.listen()
        with pytest.raises(AuthFailed, match=r"Access Denied, go away"):
            await open_inbound("127.0.0.1", port, "ClueCon", timeout_s=5)
        server.close()

    asyncio.run(scenario())


def test_wrong_userauth_password_is_refused() -> None:
    async def scenario() -> None:
        peer = ReplayPeer(fc.load(WRONG_PASSWORD))
        server, port = await peer.listen()
        with pytest.raises(AuthFailed, match=r"refused user consentsvc@127\.0\.0\.1: -ERR invalid"):
            await open_inbound(
                "127.0.0.1", port, "wrong-password", user="consentsvc@127.0.0.1", timeout_s=5
            )
        assert peer.mismatch is None
        server.close()

    asyncio.run(scenario())
