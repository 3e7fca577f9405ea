"""The sans-I/O ESL framing: any split of the captured bytes parses the same; limits hold;
the serializer refuses anything that could inject a line."""

from __future__ import annotations

import fs_captures as fc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esl_listener import protocol as p

ACCEPT = fc.load("accept_record_session").rx
JSON = fc.load("accept_uuid_record_json").rx


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=40), st.sampled_from([ACCEPT, JSON]))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int], data: bytes) -> None:
    whole = p.FrameParser().feed(data)
    parser = p.FrameParser()
    pieces = [frame for chunk in _split(data, cuts) for frame in parser.feed(chunk)]
    assert pieces == whole
    assert parser.buffered == 0


def test_one_byte_at_a_time() -> None:
    parser = p.FrameParser()
    frames = [f for i in range(len(ACCEPT)) for f in parser.feed(ACCEPT[i : i + 1])]
    assert frames == p.FrameParser().feed(ACCEPT)
    assert len(frames) == 28


def test_plain_and_json_events_decode_alike() -> None:
    json_events = [
        p.event_from_frame(f) for f in p.FrameParser().feed(JSON) if "event" in f.content_type
    ]
    park = json_events[0]
    assert park.name == "CHANNEL_PARK"
    assert park.get("FreeSWITCH-IPv6") == "fd00::2"  # plain events carry it as fd00%3A%3A2
    assert park.get("variable_current_application_data") == "127.0.0.1:8084 async full"
    plain = [
        p.event_from_frame(f) for f in p.FrameParser().feed(ACCEPT) if "event" in f.content_type
    ]
    assert plain[0].get("FreeSWITCH-IPv6") == "fd00::2"


def test_background_job_event_keeps_its_own_body() -> None:
    frames = [
        f
        for s in fc.load("s5b_esl_least_privilege_hardened_globals/inbound-monitor").steps
        if s.direction == "rx"
        for f in p.FrameParser().feed(s.data)
    ]
    job = next(p.event_from_frame(f) for f in frames if b"Event-Name: BACKGROUND_JOB" in f.body)
    assert job.get("Job-Command") == "uuid_getvar"
    assert job.body == "granted"


def test_header_block_limit() -> None:
    parser = p.FrameParser(max_header_bytes=1024)
    with pytest.raises(p.ProtocolError, match="header block"):
        parser.feed(b"X-Long: " + b"a" * 2000)


def test_body_limit_and_bad_lengths() -> None:
    with pytest.raises(p.ProtocolError, match=r"outside 0\.\.100"):
        p.FrameParser(max_body_bytes=100).feed(
            b"Content-Type: api/response\nContent-Length: 101\n\n"
        )
    with pytest.raises(p.ProtocolError, match="not a number"):
        p.FrameParser().feed(b"Content-Type: api/response\nContent-Length: 1x\n\n")
    with pytest.raises(p.ProtocolError, match="outside"):
        p.FrameParser().feed(b"Content-Type: api/response\nContent-Length: -1\n\n")
    with pytest.raises(p.ProtocolError, match="not a header line"):
        p.FrameParser().feed(b"garbage without a colon\n\n")


def test_serializer_refuses_line_breaks() -> None:
    with pytest.raises(p.UnsafeCommand):
        p.command("api uuid_getvar x\n\nsendmsg")
    with pytest.raises(p.UnsafeCommand):
        p.execute("playback", "/tmp/a.wav\ncall-command: hangup")
    with pytest.raises(p.UnsafeCommand):
        p.command("   ")
    assert p.execute("answer", event_uuid="u-1") == (
        b"sendmsg\ncall-command: execute\nexecute-app-name: answer\n"
        b"Event-UUID: u-1\nevent-lock: true\n\n"
    )
