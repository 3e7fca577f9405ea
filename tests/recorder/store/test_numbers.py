from __future__ import annotations

import pytest

from recorder.store.models import NumberKind
from recorder.store.numbers import NotAPhoneNumber, NumberProtector, mask

SECRET = bytes(range(32))


@pytest.fixture
def numbers() -> NumberProtector:
    return NumberProtector(SECRET, default_region="DE")


@pytest.mark.parametrize(
    "notation",
    [
        "+4915112345678",
        "+49 151 12345678",
        "0151 12345678",
        "0049 151 1234-5678",
        "(0151) 123 456 78",
        "+49 (0)151 12345678",
    ],
)
def test_common_notations_normalise_to_one_key(numbers: NumberProtector, notation: str) -> None:
    assert numbers.normalise(notation) == "+4915112345678"
    assert numbers.lookup_key(notation) == numbers.lookup_key("+4915112345678")


def test_default_region_decides_national_numbers() -> None:
    fr = NumberProtector(SECRET, default_region="FR")
    assert fr.normalise("01 23 45 67 89") == "+33123456789"


@pytest.mark.parametrize(
    "raw", ["anonymous", "Anonymous", "unknown", "", "Restricted", "0000000000"]
)
def test_withheld_numbers_get_no_key_and_nothing_stored(numbers: NumberProtector, raw: str) -> None:
    p = numbers.protect(raw)
    assert (p.kind, p.key, p.enc) == (NumberKind.WITHHELD, None, None)


def test_presentation_restricted_is_withheld_even_with_digits(numbers: NumberProtector) -> None:
    assert numbers.protect("+4915112345678", withheld=True).kind is NumberKind.WITHHELD


def test_an_extension_is_kept_encrypted_without_a_lookup_key(numbers: NumberProtector) -> None:
    p = numbers.protect("accept_brief")
    assert p.kind is NumberKind.UNPARSED and p.key is None
    assert numbers.reveal(p.enc) == "accept_brief"
    with pytest.raises(NotAPhoneNumber):
        numbers.lookup_key("accept_brief")


def test_encrypted_copy_round_trips_and_differs_each_time(numbers: NumberProtector) -> None:
    a, b = numbers.protect("+4915112345678"), numbers.protect("+4915112345678")
    assert a.key == b.key and a.enc != b.enc
    assert numbers.reveal(a.enc) == "+4915112345678"
    other = NumberProtector(bytes(32), default_region="DE")
    assert other.lookup_key("+4915112345678") != a.key
    with pytest.raises(Exception):  # noqa: B017 - InvalidTag: another secret cannot read it
        other.reveal(a.enc)


def test_mask_keeps_two_digits() -> None:
    assert mask("+4915112345678") == "…78"
    assert mask(None) == "-"
