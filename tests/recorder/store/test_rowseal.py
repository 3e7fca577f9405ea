"""The seal's fast column encoder writes exactly what canonical JSON writes: a seal computed on
the hot path must match the one ``audit verify`` recomputes, byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from recorder.store import audit, rowseal

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


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_the_shared_encoders_write_what_json_dumps_writes(value: object) -> None:
    assert rowseal._encode_json(value) == _dumps(rowseal._plain(value))
    assert audit.canonical_json({"v": value, "é": [value]}) == _dumps({"v": value, "é": [value]})


# computed by the seal code as it was before the hot path's rewrites (2026-12-04, c2fcdd6): a
# seal the store wrote then must still verify, so its bytes can never change
SEALS_BEFORE = {
    "consent_evidence": (
        "0fc652168bb356ca0966ece228e4922d0bec57f147306ccc3280044fbe2022d8",
        "f7314a7302d86041604a8ae82d5bf50e7dd03f8305660fd17186c4b5a1984858995bcd9c31a5051c19b8"
        "abeedb74356568f1a5",
    ),
    "recordings": (
        "197bb8096ce3dba5dcb920628f5662697c8d5e618ff771099c7f47aecdbcaa66",
        "283eccea0f087c40eefe62ac721c77ce5ba79b2fe0998db683ac867347ae7502f10f87a5663ed56f125d"
        "d45438db4e75fefd738b541ea580fa271c86ceff00be9b9e332ec01f09d95bc6be7b62a28ed617",
    ),
}


@pytest.mark.parametrize("table", sorted(SEALS_BEFORE))
def test_a_seal_is_byte_for_byte_the_one_written_before(table: str) -> None:
    row = {name: VALUES[i % len(VALUES)] for i, name in enumerate(rowseal.SEALED[table])}
    row["id"] = f"{table}-1"
    seal = rowseal.seal_of(table, row)
    assert (seal["sha256"], seal["fields"]) == SEALS_BEFORE[table]
    assert seal == {"v": 1, "table": table, "id": f"{table}-1", **seal}
