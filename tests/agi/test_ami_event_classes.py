"""The daemon's AMI login asks Asterisk for ``call``-class events only (``Events: call``): what
it acts on (``Hangup``, ``ChanSpyStart``/``Stop``, ``MixMonitor*``) is all ``call``, and with
``Events: on`` Asterisk 22 also sends every AGI command's start and end, every dialplan step
and variable set, DTMF: 49 of the 71 events of one captured consent call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asterisk_captures import call_events
from asterisk_sim_ami import ALL_CLASSES, AmiUser, SimAmi, event_mask, manager_conf_user
from panoramisk.message import Message

from agi.ami import AmiClient

SHIPPED = Path(__file__).resolve().parents[2] / "dialplan" / "asterisk" / "manager_callconsent.conf"


def _captured_call() -> list[tuple[str, str, list[tuple[str, str]]]]:
    return call_events("asterisk/ami-accept_brief.log")


def _replay(user: AmiUser) -> tuple[list[dict[str, str]], list[Message]]:
    """The captured call's events, emitted by the simulated Asterisk to our AMI client
    logged in as ``user``: the actions it received, the events the client got."""
    got: list[Message] = []

    async def scenario() -> list[dict[str, str]]:
        ami = SimAmi(sim=None, users={"callconsent": user})  # type: ignore[arg-type]
        await ami.start()
        client = AmiClient("127.0.0.1", ami.port, "callconsent", "x", on_event=got.append)
        try:
            assert await client.start()
            for name, category, headers in _captured_call():
                ami.emit(name, headers, category)
            ami.emit("UserEvent", [("UserEvent", "end")], "user")  # a marker, filtered out
            await asyncio.sleep(0.3)  # the client reads what was sent
        finally:
            await client.stop()
            await ami.stop()
        return ami.received

    return asyncio.run(scenario()), got


def test_the_login_asks_for_call_events_and_gets_only_those() -> None:
    """A ``read = all`` user without filters (the lab's): the login's mask is the filter."""
    received, got = _replay(AmiUser("x", {"call"}))
    login = next(h for h in received if h.get("action", "").lower() == "login")
    assert login.get("events") == "call"
    call = _captured_call()
    wanted = [name for name, category, _ in call if category == "call"]
    assert [m.get("Event") for m in got] == wanted
    assert len(call) == 71 and len(wanted) == 22  # the other 49: agi, dialplan, dtmf
    assert wanted.count("Hangup") == 2 and "AGIExecStart" not in wanted


def test_the_shipped_ami_user_gets_only_the_events_callconsent_reads() -> None:
    """``dialplan/asterisk/manager_callconsent.conf``: ``read = call`` and its event filter
    leave the captured call's two hangups and the MixMonitor start."""
    user = manager_conf_user(SHIPPED.read_text(), "callconsent", "x")
    assert user.read == {"call"} and user.write == {"call"}
    _, got = _replay(user)
    assert [m.get("Event") for m in got] == ["MixMonitorStart", "Hangup", "Hangup"]


@pytest.mark.parametrize(
    ("header", "classes"),
    [
        (None, ALL_CLASSES),
        ("on", ALL_CLASSES),
        ("off", frozenset()),
        ("call", {"call"}),
        ("system,call", {"system", "call"}),
        ("nonsense", frozenset()),
    ],
)
def test_the_simulator_masks_events_as_asterisk_does(
    header: str | None, classes: frozenset[str]
) -> None:
    assert event_mask(header) == classes
