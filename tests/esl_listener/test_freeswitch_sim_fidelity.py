"""The simulator against the captures it was built from: for the same commands, the simulated
FreeSWITCH sends the same kinds of frames in the same order as the real one did."""

from __future__ import annotations

import asyncio

import fs_captures as fc
import pytest
from freeswitch_sim import Caller, FakeFreeSwitch
from fs_replay import expected

from esl_listener.connection import EslConnection
from esl_listener.protocol import Event

SKIP = {"CHANNEL_PARK"}  # FreeSWITCH parks the channel when the socket app starts; no effect


def _names_after_question(events: list[Event]) -> list[str]:
    names = [e.name for e in events if e.name not in SKIP]
    start = next(
        i
        for i, e in enumerate(events)
        if e.name == "CHANNEL_EXECUTE" and e.get("Application") == "play_and_get_digits"
    )
    kept = [e for e in events[start:] if e.name not in SKIP]
    return [e.name for e in kept][: len(names)]


async def _sim_events(caller: Caller, prompt: str) -> list[Event]:
    fs = FakeFreeSwitch()
    seen: list[Event] = []
    done = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = EslConnection(reader, writer, name="fidelity")
        conn.add_listener(seen.append)
        await conn.connect()
        for line in (
            "myevents",
            "event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP",
            "linger",
        ):
            await conn.send(line)
        await conn.execute("answer")
        arg = f"1 1 1 4000 # {prompt} silence_stream://250 consent_digit ^[12]$ 2000"
        await conn.execute("play_and_get_digits", arg, timeout_s=5)
        await asyncio.sleep(0.05)
        await conn.close()
        done.set_result(None)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    leg = fs.new_leg("consent", "4915112345")
    await fs.call(server.sockets[0].getsockname()[1], leg, caller)
    await done
    server.close()
    return seen


@pytest.mark.parametrize(
    ("capture", "caller"),
    [
        ("decline", Caller(["2"])),
        ("accept_record_session", Caller(["1"])),
        ("noinput_timeout", Caller([None])),
        ("caller_hangup_during_prompt", Caller(["hangup"])),
    ],
)
def test_the_question_produces_the_captured_event_order(
    capture: str, caller: Caller, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    prompt = tmp_path / "consent.wav"
    prompt.write_bytes(b"RIFF")
    _, captured, _ = expected(fc.load(capture))
    sim = asyncio.run(_sim_events(caller, str(prompt)))
    want = _names_after_question(captured)
    got = _names_after_question(sim)
    # the capture goes on (exports, hangup by its driver); compare the question's own events
    end = want.index("CHANNEL_EXECUTE_COMPLETE") + 1
    if capture == "caller_hangup_during_prompt":
        end = want.index("CHANNEL_HANGUP_COMPLETE") + 1
    assert got[:end] == want[:end]
