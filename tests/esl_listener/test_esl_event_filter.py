"""Only the events someone reads are parsed, and nothing anyone reads is lost.

``myevents`` brings every event of an outbound session's channel; the dialogue reads DTMF and
PLAYBACK_STOP, the connection itself its completions, background jobs and the channel's
hangup. An event no one names is dropped on its ``Event-Name`` (read without parsing the
body). Checked here on every frame of every capture (``tests/fixtures/freeswitch``): the name
read that way is the name the full parse finds, the faster header parser gives what the
line-by-line one gave, and a connection fed a capture hands a filtered listener exactly the
events an unfiltered one gets of those names, and still completes its ``execute``s.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import fs_captures as fc
import pytest
from freeswitch_sim import FakeFreeSwitch
from hypothesis import given, settings
from hypothesis import strategies as st

from esl_listener import protocol as p
from esl_listener.connection import CORE_EVENTS, EslConnection
from esl_listener.consent import TRACED
from esl_listener.inbound import InboundClient


def _reference_header_block(block: bytes) -> dict[str, str]:
    """The parser as it was before (``9aca70e``): line by line, every value unquoted."""
    headers: dict[str, str] = {}
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise p.ProtocolError(f"not a header line: {line[:80]!r}")
        key = name.decode("utf-8", "replace").strip()
        if key and key not in headers:
            headers[key] = unquote(value.strip(b" ").decode("utf-8", "replace"), errors="replace")
    return headers


def _event_frames() -> list[tuple[str, p.Frame]]:
    found = []
    for name in fc.all_names():
        for step in fc.load(name).steps:
            if step.direction == "rx":
                for frame in p.FrameParser().feed(step.data):
                    if frame.content_type == "text/event-plain":
                        found.append((name, frame))
    return found


EVENT_FRAMES = _event_frames()


def test_the_captures_hold_many_events_of_many_kinds() -> None:
    names = {p.parse_plain_event(f.body).name for _, f in EVENT_FRAMES}
    assert len(EVENT_FRAMES) > 300
    assert {"CHANNEL_EXECUTE", "DTMF", "PLAYBACK_STOP", "RECORD_STOP", "COMMAND"} <= names


def test_event_name_read_unparsed_is_the_parsed_one_on_every_captured_event() -> None:
    for capture, frame in EVENT_FRAMES:
        parsed = p.parse_plain_event(frame.body)
        assert p.plain_event_name(frame.body) == parsed.name, (capture, parsed.name)


def test_header_parser_gives_what_the_line_by_line_one_gave_on_every_captured_block() -> None:
    blocks = [f.body.split(b"\n\n", 1)[0] for _, f in EVENT_FRAMES]
    blocks += [
        s.data.split(b"\n\n", 1)[0]
        for n in fc.all_names()
        for s in fc.load(n).steps
        if s.direction == "rx"
    ]
    for block in blocks:
        assert p.parse_header_block(block) == _reference_header_block(block)
        assert list(p.parse_header_block(block)) == list(_reference_header_block(block))


_LINE_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
_LINES = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([b"Event-Name", b"A", b" A ", b"Event-Name ", b"x%41"]), _LINE_BYTES
        ).map(lambda kv: kv[0] + b":" + kv[1]),
        st.sampled_from(
            [b"", b"\r", b"K: %E2%82%AC\r", b"K2:%zz %4", b"V: \xe2\x82", b"W: a\r \r", b"junk\r"]
        ),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(_LINES)
def test_header_parser_and_name_agree_with_the_reference_on_any_block(lines: list[bytes]) -> None:
    block = b"\n".join(lines)
    try:
        want = _reference_header_block(block)
    except p.ProtocolError as exc:
        with pytest.raises(p.ProtocolError) as got:
            p.parse_header_block(block)
        assert str(got.value) == str(exc)
        return
    assert p.parse_header_block(block) == want
    name = p.plain_event_name(block + b"\n\nbody\nEvent-Name: NOT_THIS\n")
    # unread (None) only sends the event to the full parse; a name read must be the parsed one
    assert name is None or name == want.get("Event-Name", ""), (block, name, want)


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"Event-Name: DTMF\nUnique-ID: u\n\n", "DTMF"),
        (b"Core-UUID: c\r\nEvent-Name: RECORD_STOP\r\n\n", "RECORD_STOP"),
        (b"Core-UUID: c\n\nEvent-Name: IN_THE_BODY\n", None),  # past the header block
        (b"X-Event-Name: A\nEvent-Name: B\n\n", None),  # an earlier line names it: parse
        (b"Event-Name: %41\n\n", None),  # encoded: parse
        (b"Event-Name: COMMAND\nEvent-Name: PRIVATE_COMMAND\n\n", "COMMAND"),  # the first wins
    ],
)
def test_event_name_edge_cases(body: bytes, name: str | None) -> None:
    assert p.plain_event_name(body) == name


class _NullWriter:
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


def _events_of(capture: str) -> list[bytes]:
    """The capture's events as FreeSWITCH framed them (its replies need our commands)."""
    return [
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(f.body) + f.body
        for name, f in EVENT_FRAMES
        if name == capture
    ]


@pytest.mark.parametrize(
    "capture", ["accept_record_session", "s7_bind_digit_action/inbound-monitor"]
)
def test_filtered_listener_gets_exactly_its_events_and_the_rest_is_not_parsed(capture: str) -> None:
    async def scenario() -> None:
        every: list[p.Event] = []
        traced: list[p.Event] = []
        hangups: list[p.Event] = []
        full = EslConnection(None, _NullWriter())  # type: ignore[arg-type]
        full.add_listener(every.append)
        filtered = EslConnection(None, _NullWriter())  # type: ignore[arg-type]
        filtered.add_listener(traced.append, TRACED)
        filtered.add_listener(hangups.append, ("CHANNEL_HANGUP_COMPLETE", "RECORD_STOP"))
        for data in _events_of(capture):
            full.data_received(data)
            filtered.data_received(data)
        assert not full.closed.is_set() and not filtered.closed.is_set()
        assert len(every) == len(_events_of(capture))
        wanted = set(TRACED) | {"CHANNEL_HANGUP_COMPLETE", "RECORD_STOP"}
        assert [e.headers for e in traced] == [e.headers for e in every if e.name in TRACED]
        assert [e.headers for e in hangups] == [
            e.headers for e in every if e.name in ("CHANNEL_HANGUP_COMPLETE", "RECORD_STOP")
        ]
        unread = [e for e in every if e.name not in wanted | CORE_EVENTS]
        assert unread, "the capture has events no one here reads"
        assert filtered.events_skipped == len(unread)
        assert full.events_skipped == 0

    asyncio.run(scenario())


def test_execute_completes_and_hangup_is_seen_with_no_listener_wanting_them() -> None:
    """The connection's own events (CORE_EVENTS) are parsed whatever the listeners name."""

    async def scenario() -> None:
        conn = EslConnection(None, _NullWriter(), new_uuid=lambda: "app-1")  # type: ignore[arg-type]
        conn.channel_uuid = "leg-1"
        seen: list[p.Event] = []
        conn.add_listener(seen.append, ("DTMF",))

        def event(*headers: str) -> bytes:
            body = ("\n".join(headers) + "\n\n").encode()
            return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body

        running = asyncio.create_task(conn.execute("answer", timeout_s=5))
        await asyncio.sleep(0)
        conn.data_received(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
        conn.data_received(event("Event-Name: CHANNEL_EXECUTE", "Unique-ID: leg-1"))
        conn.data_received(
            event(
                "Event-Name: CHANNEL_EXECUTE_COMPLETE",
                "Unique-ID: leg-1",
                "Application-UUID: app-1",
                "Application-Response: _none_",
            )
        )
        done = await asyncio.wait_for(running, 5)
        assert done.get("Application-Response") == "_none_"
        conn.data_received(event("Event-Name: DTMF", "Unique-ID: leg-1", "DTMF-Digit: 1"))
        conn.data_received(event("Event-Name: CHANNEL_HANGUP_COMPLETE", "Unique-ID: leg-1"))
        assert conn.channel_gone
        assert [e.name for e in seen] == ["DTMF"]
        assert conn.events_skipped == 1  # CHANNEL_EXECUTE
        conn.remove_listener(seen.append)
        conn.add_listener(seen.append)  # no names: every event, parsed
        conn.data_received(event("Event-Name: CHANNEL_STATE", "Unique-ID: leg-1"))
        assert [e.name for e in seen] == ["DTMF", "CHANNEL_STATE"]
        assert conn.events_skipped == 1

    asyncio.run(scenario())


def test_inbound_client_queues_what_the_registry_acts_on_and_nothing_else() -> None:
    """The daemon's inbound connection over the simulated FreeSWITCH: every event the call
    registry acts on reaches ``on_event``, in order; RECORD_START (subscribed, acted on by no
    one) and events of no subscription do not, and RECORD_START is not even parsed."""

    async def scenario() -> None:
        fs = FakeFreeSwitch(password="pw")
        await fs.start()
        seen: list[tuple[str, str]] = []

        async def on_event(event: p.Event) -> None:
            seen.append((event.name, event.subclass))

        client = InboundClient("127.0.0.1", fs.port, "pw", on_event=on_event)
        await client.start()
        await asyncio.wait_for(client.connected.wait(), 5)
        assert client.refused_subscriptions == []
        leg = fs.new_leg("consent", "4915112345")
        fs.emit("RECORD_START", leg, Record_File_Path="/tmp/x.wav")
        fs.emit("CHANNEL_EXECUTE", leg)  # subscribed by no one: never sent
        fs.emit("RECORD_STOP", leg, Record_File_Path="/tmp/x.wav")
        fs.emit("CUSTOM", leg, **{"Event-Subclass": "consent::withdraw"})
        fs.feature_code(leg, "pause")
        fs.emit("CHANNEL_HANGUP_COMPLETE", leg, Hangup_Cause="NORMAL_CLEARING")
        for _ in range(200):
            if len(seen) >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        conn = client._conn
        assert conn is not None
        skipped = conn.events_skipped
        await client.stop()
        await fs.stop()
        assert seen == [
            ("RECORD_STOP", ""),
            ("CUSTOM", "consent::withdraw"),
            ("CUSTOM", "consent::agent_cmd"),
            ("CHANNEL_HANGUP_COMPLETE", ""),
        ]
        assert skipped == 1  # the RECORD_START

    asyncio.run(scenario())
