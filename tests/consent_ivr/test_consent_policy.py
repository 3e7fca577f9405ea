from __future__ import annotations

import enum
from dataclasses import fields

import pytest

from consent_ivr import LegalBasis, Policy, PolicyBook, PolicyError, SilenceOutcome


def test_defaults_are_the_cautious_choice() -> None:
    p = Policy()
    assert p.asks_consent
    assert (p.accept_digit, p.decline_digit, p.max_attempts) == ("1", "2", 2)
    assert p.silence_outcome is SilenceOutcome.DECLINE
    assert p.on_withdrawal.value == "stop_and_discard"
    assert p.withdraw_digit is None and not p.monitoring_allowed


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (
            {"mode": "yes"},
            "policies.sales.mode",
            "expected one of consent, always, never, on_demand",
        ),
        ({"accept_digit": "12"}, "policies.sales.accept_digit", "one DTMF key"),
        ({"accept_digit": "2"}, "policies.sales.decline_digit", "must differ"),
        ({"max_attempts": 0}, "policies.sales.max_attempts", "1..5"),
        ({"max_attempts": "2"}, "policies.sales.max_attempts", "integer"),
        ({"silence_outcome": "accept"}, "policies.sales.silence_outcome", "silence is not consent"),
        ({"mode": "always"}, "policies.sales.mode", "legal_basis"),
        ({"colour": "red"}, "policies.sales.colour", "unknown setting"),
        ({"monitoring_allowed": "yes"}, "policies.sales.monitoring_allowed", "true or false"),
    ],
)
def test_invalid_settings_name_the_key(data: dict, key: str, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        Policy.from_mapping("sales", data)
    assert err.value.key == key
    assert words in str(err.value)


def test_legitimate_interest_defaults_to_no_objection() -> None:
    p = Policy.from_mapping("li", {"legal_basis": "legitimate_interest"})
    assert p.legal_basis is LegalBasis.LEGITIMATE_INTEREST
    assert p.silence_outcome is SilenceOutcome.ACCEPT and p.allows_objection


def test_book_inherits_default_and_falls_back() -> None:
    book = PolicyBook.from_mapping(
        {"default": {"max_attempts": 3}, "sales": {"record_from": "agent_answer"}}
    )
    assert book.for_campaign("sales").max_attempts == 3
    assert book.for_campaign("sales").record_from.value == "agent_answer"
    assert book.for_campaign("unknown") is book.default
    assert book.knows("sales") and not book.knows("unknown")


def test_snapshot_is_plain_data() -> None:
    snap = Policy(name="x").snapshot()
    assert snap["mode"] == "consent" and snap["name"] == "x"
    assert all(isinstance(v, str | int | bool | type(None)) for v in snap.values())


def test_snapshot_is_each_policys_own_and_a_fresh_dict() -> None:
    # built once per policy (it is kept with every decision): the cache must never hand one
    # policy's settings to another, nor let a caller's change reach the next decision
    sales = Policy(name="sales", mode="always", legal_basis="contract", beep_interval_s=15)
    service = Policy(name="service", stereo=True, withdraw_digit="9")
    first = sales.snapshot()
    assert first == {
        f.name: (v.value if isinstance(v := getattr(sales, f.name), enum.Enum) else v)
        for f in fields(Policy)
    }
    assert service.snapshot()["stereo"] is True and service.snapshot()["name"] == "service"
    assert service.snapshot()["withdraw_digit"] == "9" and first["withdraw_digit"] is None
    first["mode"] = "never"
    assert sales.snapshot()["mode"] == "always"
    assert sales.snapshot() is not sales.snapshot()
