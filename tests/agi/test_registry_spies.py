"""The call registry finds the call a listener (ChanSpy) listens to by the listener's
uniqueid in one lookup, and forgets listeners when they stop, hang up or the call goes."""

from __future__ import annotations

from agi.calls import CallRegistry


def test_listeners_are_found_and_forgotten() -> None:
    reg = CallRegistry()
    one, two = reg.attach("k1", "c1"), reg.attach("k2", "c2")
    reg.spy_started(one, "s1", "PJSIP/sup-1")
    reg.spy_started(two, "s2", "PJSIP/sup-2")
    assert reg.by_spy("s1") is one and reg.by_spy("s2") is two
    assert one.spies == {"s1": "PJSIP/sup-1"}
    reg.spy_gone("s1")  # ChanSpyStop or the listener's Hangup
    assert reg.by_spy("s1") is None and one.spies == {}
    two.spies.pop("s2")  # the listener was cut off by us (control.py)
    assert reg.by_spy("s2") is None
    reg.spy_started(two, "s3", "PJSIP/sup-3")
    reg.drop("k2")
    assert reg.by_spy("s3") is None
    assert reg._by_spy == {"s2": two}  # forgotten at the listener's Hangup, which always comes
    reg.spy_gone("s2")
    assert reg._by_spy == {}


def test_an_unknown_hangup_is_no_listener() -> None:
    reg = CallRegistry()
    reg.attach("k", "c")
    assert reg.by_spy("c") is None and reg.by_spy("nobody") is None
    reg.spy_gone("nobody")
