"""Every captured AMI stream replayed byte for byte to our AMI client (panoramisk underneath)
over a real socket, and every captured action answered with its captured response."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asterisk_captures import (
    AmiMessage,
    AmiReplayServer,
    action_key,
    captured_actions,
    fixtures,
    parse_ami_capture,
    summaries,
)
from panoramisk.message import Message

from agi.adapter import AsteriskAdapter, AsteriskOptions
from agi.ami import AmiClient, AmiError, NoSuchChannel, PermissionDenied
from recorder.finalize.spool import Spool

CAPTURES = fixtures("asterisk/ami-*.log") + fixtures("asterisk-bridge/ami-*.log")


class _Calls:
    """The call book as far as AMI events reach it: only ended calls are forgotten."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.marks: dict[str, object] = {}

    def find(self, pbx: str, key: str) -> None:
        return None

    def forget(self, pbx: str, key: str) -> None:
        self.forgotten.append(key)


def customer_legs(events: list[AmiMessage]) -> dict[str, str]:
    """uniqueid -> linkedid of each screened (customer) leg: the ;2 half of Local/…@consent-in
    or Local/cust@cc-inbound."""
    return {
        str(e.get("Uniqueid")): str(e.get("Linkedid"))
        for e in events
        if e.get("Event") == "Newchannel"
        and (e.get("Channel") or "").endswith(";2")
        and (
            "@consent-in-" in (e.get("Channel") or "") or "@cc-inbound-" in (e.get("Channel") or "")
        )
    }


async def replay_events(
    path: Path, tmp: Path
) -> tuple[list[Message], list[AmiMessage], AsteriskAdapter]:
    messages = parse_ami_capture(path)
    events = [m for m in messages if m.direction == "RX" and m.user == "test" and m.get("Event")]
    calls = _Calls()
    spool = Spool(tmp)
    adapter = AsteriskAdapter(calls, spool, AsteriskOptions(), tmp)  # type: ignore[arg-type]
    for uid, key in customer_legs(events).items():
        adapter.registry.attach(key, uid)
    got: list[Message] = []

    def on_event(message: Message) -> None:
        got.append(message)
        adapter.on_ami_event(message)

    server = AmiReplayServer([e.raw for e in events])
    await server.start()
    client = AmiClient("127.0.0.1", server.port, "callconsent", "x", on_event=on_event)
    try:
        assert await client.start()
        for _ in range(400):
            if len(got) >= len(events):
                break
            await asyncio.sleep(0.01)
        await adapter.drain(2.0)
    finally:
        await client.stop()
        await server.stop()
    return got, events, adapter


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name.removesuffix(".log.gz") for p in CAPTURES])
def test_every_captured_event_reaches_the_adapter_intact(path: Path, tmp_path: Path) -> None:
    got, events, adapter = asyncio.run(replay_events(path, tmp_path))
    assert [m.get("Event") for m in got] == [e.get("Event") for e in events]
    for message, captured in zip(got, events, strict=True):
        for key, value in captured.headers:
            parsed = message.get(key)
            if parsed is None and value == "" and (key, value) == captured.headers[-1]:
                continue  # panoramisk strips the message, and with it an empty last header
            assert value == parsed or (isinstance(parsed, list) and value in parsed), key
    # a customer leg's Hangup ends its call (there is no MixMonitorStop on hangup)
    hung_up = {str(e.get("Uniqueid")) for e in events if e.get("Event") == "Hangup"}
    for uid, key in customer_legs(events).items():
        assert (key in adapter.calls.forgotten) == (uid in hung_up)  # type: ignore[attr-defined]


def test_listeners_are_tracked_from_chanspy_events(tmp_path: Path) -> None:
    path = next(p for p in CAPTURES if "s5_chanspy" in p.name)
    seen: list[int] = []

    async def scenario() -> None:
        messages = parse_ami_capture(path)
        events = [
            m for m in messages if m.direction == "RX" and m.user == "test" and m.get("Event")
        ]
        cut = next(i for i, e in enumerate(events) if e.get("Event") == "ChanSpyStart")
        calls = _Calls()
        adapter = AsteriskAdapter(calls, Spool(tmp_path), AsteriskOptions(), tmp_path)  # type: ignore[arg-type]
        call = adapter.registry.attach("1795348737.98", "1795348737.99")
        for event in events[: cut + 1]:
            adapter.on_ami_event(Message.from_line(event.raw.decode().strip()))
        seen.append(len(call.spies))
        stop = next(i for i, e in enumerate(events) if e.get("Event") == "ChanSpyStop")
        for event in events[cut + 1 : stop + 1]:
            adapter.on_ami_event(Message.from_line(event.raw.decode().strip()))
        seen.append(len(call.spies))
        await adapter.drain(1.0)

    asyncio.run(scenario())
    assert seen == [1, 1]  # two listeners started over the capture, the first stop ends one


def _all_actions() -> list[tuple[str, dict[str, str], bytes]]:
    out = []
    for path in CAPTURES:
        for headers, response in captured_actions(parse_ami_capture(path)):
            if headers["Action"] in ("Login", "Logoff"):
                continue
            if headers["Action"] == "Originate" and response.get("Response") == "Success":
                continue  # the capture driver's calls; panoramisk then waits for the call itself
            out.append((path.name.split(".")[0], headers, response.raw))
    for summary in summaries("asterisk/ami-summary.jsonl"):
        for a in summary.get("ami_actions", []):
            response = "".join(f"{k}: {v}\r\n" for k, v in a["response"].items()) + "\r\n"
            out.append(("ami_actions", {"Action": a["action"], **a["headers"]}, response.encode()))
    return out


ACTIONS = _all_actions()


@pytest.mark.parametrize(
    ("scenario", "headers", "response"),
    ACTIONS,
    ids=[f"{s}-{i}-{h['Action']}" for i, (s, h, _) in enumerate(ACTIONS)],
)
def test_every_captured_action_reply_is_understood(
    scenario: str, headers: dict[str, str], response: bytes
) -> None:
    reply = Message.from_line(response.decode().strip())
    name = headers["Action"]
    args = {k: v for k, v in headers.items() if k not in ("Action", "ActionID")}
    if "Variable" in args and isinstance(args["Variable"], str) and name == "Originate":
        args.pop("Variable")  # several Variable headers; the reply is what matters here

    async def send() -> object:
        server = AmiReplayServer([], {action_key(headers): response})
        await server.start()
        client = AmiClient("127.0.0.1", server.port, "callconsent", "x", events="off")
        try:
            assert await client.start()
            return await client.action(name, **args)
        except (AmiError, ValueError) as exc:
            return exc
        finally:
            await client.stop()
            await server.stop()

    if any(len(v) > 900 or "\n" in v or "\r" in v for v in args.values()):
        # AMI rejects lines over 1024 bytes (s7) and a line break would inject headers: we
        # refuse to send such a value at all
        assert isinstance(asyncio.run(send()), ValueError)
        return
    outcome = asyncio.run(send())
    message = str(reply.get("Message", ""))
    if reply.get("Response") != "Error":
        assert isinstance(outcome, Message)
        for key in ("MixMonitorID", "Value", "Variable"):
            if reply.get(key):
                assert outcome.get(key) == reply.get(key)
    elif message == "Permission denied":
        assert isinstance(outcome, PermissionDenied)
    elif message.startswith(("No such channel", "Channel does not exist")):
        assert isinstance(outcome, NoSuchChannel)
    else:
        assert isinstance(outcome, AmiError) and not isinstance(outcome, PermissionDenied)
        assert outcome.message == message
