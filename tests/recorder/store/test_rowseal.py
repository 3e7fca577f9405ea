"""The seal's fast column encoder writes exactly what canonical JSON writes: a seal computed on
the hot path must match the one ``audit verify`` recomputes, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from recorder.store import rowseal

VALUES = [
    "",
    "plain",
    'quote " backslash \\ newline \n tab \t nul \x00 unit separator \x1f',
    "é ü ß 😀 \u2028 \u2029 \ud7ff",
    None,
    0,
    -5,
    2**70,
    True,
    False,
    1.5,
    float("nan"),
    [1, "x", None],
    {"b": 1, "a": [None, "é"]},
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_the_fast_encoder_writes_what_json_dumps_writes(value: object) -> None:
    assert rowseal._encode(value) == rowseal._encode_json(value)


def test_a_seal_is_the_one_the_json_encoder_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {name: VALUES[i % len(VALUES)] for i, name in enumerate(rowseal.SEALED["recordings"])}
    row["id"] = "rec-1"
    fast = rowseal.seal_of("recordings", row)
    monkeypatch.setattr(rowseal, "_encode", rowseal._encode_json)
    assert fast == rowseal.seal_of("recordings", row)
