"""The .ccrec format: the documented test vectors, round trips, every tamper case, key slots
and their re-wrap, and the HPKE envelope."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.vault import envelope
from recorder.vault import fileformat as ff

DOC = Path(__file__).resolve().parents[3] / "docs" / "recording-format.md"
RID = "00000000-0000-4000-8000-000000000001"
OTHER_RID = "00000000-0000-4000-8000-000000000002"


def doc_blocks() -> list[dict[str, str]]:
    """Every ```text block of the format doc as {field: value}."""
    blocks = re.findall(r"```text\n(.*?)```", DOC.read_text(), re.S)
    return [
        {m[1]: m[2].strip() for m in re.finditer(r"^(\S+(?: \S+)*?)(?: {2,}(.*))?$", b, re.M)}
        for b in blocks
    ]


def build(pt: bytes, key: bytes, header: ff.Header, slots: list[ff.KeySlot], chunk: int) -> bytes:
    enc = ff.StreamEncryptor(key, header, slots)
    body = b"".join(enc.update(pt[i : i + chunk]) for i in range(0, len(pt), chunk))
    return enc.header + enc.slot_area + body + enc.finalize()


def decrypt(blob: bytes, key: bytes) -> bytes:
    f = io.BytesIO(blob)
    return b"".join(ff.decrypt_segments(f, key, ff.read_header(f)))


def test_documented_vectors_are_what_the_code_writes() -> None:
    blocks = doc_blocks()
    common = blocks[0]
    key = bytes.fromhex(common["data key"])
    header = ff.Header(
        common["recording id"],
        bytes.fromhex(common["nonce prefix"]),
        int(common["segment size"]),
    )
    assert header.pack().hex() == common["header"]
    vectors = [b for b in blocks[1:] if "segment 0" in b]
    assert len(vectors) == 3
    for vec in vectors:
        pt = bytes.fromhex(vec.get("plaintext") or "")
        blob = build(pt, key, header, [], chunk=7)
        segments = blob[header.data_offset :]
        expected = "".join(v for k, v in sorted(vec.items()) if k.startswith("segment "))
        assert segments.hex() == expected
        assert decrypt(blob, key) == pt


def test_documented_key_slot_vector_unwraps() -> None:
    vec = next(b for b in doc_blocks() if "wrapped" in b)
    private = bytes.fromhex(vec["epoch private"])
    assert envelope.public_from_private(private).hex() == vec["epoch public"]
    slot = ff.KeySlot(envelope.SUITE_X25519, vec["epoch"], bytes.fromhex(vec["wrapped"]))
    assert envelope.unwrap(slot, private, vec["recording id"]).hex() == vec["data key"]


@settings(max_examples=60, deadline=None)
@given(
    pt=st.binary(max_size=700),
    seg=st.sampled_from([16, 17, 64, 100]),
    chunk=st.integers(1, 300),
)
def test_round_trip_any_size_any_chunking(pt: bytes, seg: int, chunk: int) -> None:
    key = os.urandom(32)
    blob = build(pt, key, ff.Header(RID, os.urandom(7), seg), [], chunk)
    count, _ = ff.segment_layout(ff.Header.parse(blob), len(blob))
    assert count == max(1, -(-len(pt) // seg))
    assert decrypt(blob, key) == pt


@pytest.fixture
def sample() -> tuple[bytes, bytes, ff.Header]:
    key = os.urandom(32)
    header = ff.Header(RID, os.urandom(7), 64)
    return build(os.urandom(64 * 4 + 10), key, header, [], 50), key, header


def test_every_bit_flip_is_detected(sample: tuple[bytes, bytes, ff.Header]) -> None:
    blob, key, header = sample
    for pos in [*range(0, ff.HEADER.size), *range(header.data_offset, len(blob), 7)]:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((ff.TamperedError, ff.FormatError)):
            decrypt(bytes(bad), key)


def test_header_edits_are_detected(sample: tuple[bytes, bytes, ff.Header]) -> None:
    blob, key, header = sample
    for edited in (
        ff.Header(OTHER_RID, header.nonce_prefix, header.segment_size),
        ff.Header(RID, b"\x00" * 7, header.segment_size),
        ff.Header(RID, header.nonce_prefix, 32),
    ):
        with pytest.raises(ff.TamperedError):
            decrypt(edited.pack() + blob[ff.HEADER.size :], key)
    with pytest.raises(ff.FormatError, match="version 2"):
        decrypt(blob[:8] + b"\x02" + blob[9:], key)
    with pytest.raises(ff.FormatError, match="magic"):
        decrypt(b"RIFF" + blob[4:], key)


def test_truncation_reordering_and_extension_are_detected(
    sample: tuple[bytes, bytes, ff.Header],
) -> None:
    blob, key, header = sample
    stride, start = header.segment_size + ff.TAG_SIZE, header.data_offset
    segs = [blob[i : i + stride] for i in range(start, len(blob), stride)]
    assert len(segs) == 5
    head = blob[:start]
    cases = {
        "cut at a boundary": head + b"".join(segs[:3]),
        "cut inside a segment": blob[:-5],
        "cut to the header": head,
        "swapped": head + segs[1] + segs[0] + b"".join(segs[2:]),
        "duplicated": head + segs[0] + b"".join(segs),
        "appended": blob + b"\x00" * 20,
        "last dropped, full stream": head + b"".join(segs[:4]),
    }
    for name, bad in cases.items():
        with pytest.raises(ff.TamperedError):
            decrypt(bad, key)
            pytest.fail(f"{name} was not detected")


def test_a_wrong_key_fails_the_first_segment(sample: tuple[bytes, bytes, ff.Header]) -> None:
    blob, _, _ = sample
    with pytest.raises(ff.TamperedError, match="segment 0 of 5"):
        decrypt(blob, os.urandom(32))


def test_slots_rewrite_in_place_without_touching_the_audio(tmp_path: Path) -> None:
    key = os.urandom(32)
    priv_a, pub_a = envelope.generate_keypair()
    priv_b, pub_b = envelope.generate_keypair()
    slot_a = envelope.wrap(key, pub_a, RID, "2026-W50")
    blob = build(os.urandom(1000), key, ff.Header(RID, os.urandom(7), 64), [slot_a], 99)
    path = tmp_path / f"{RID}.ccrec"
    path.write_bytes(blob)
    with path.open("rb") as f:
        before = ff.ciphertext_digest(f, ff.read_header(f))
        assert ff.read_slots(f) == [slot_a]
    hold = envelope.wrap(key, pub_b, RID, "hold-1")
    ff.rewrite_slots(path, [hold])
    ff.rewrite_slots(path, [slot_a, hold])  # generation 3, back in table A
    after = path.read_bytes()
    assert after[: ff.HEADER.size] == blob[: ff.HEADER.size]
    assert after[ff.Header.parse(after).data_offset :] == blob[ff.Header.parse(blob).data_offset :]
    with path.open("rb") as f:
        assert ff.ciphertext_digest(f, ff.read_header(f)) == before
        slots = ff.read_slots(f)
    assert slots == [slot_a, hold]
    assert envelope.unwrap(slots[1], priv_b, RID) == key
    assert envelope.unwrap(slots[0], priv_a, RID) == key
    assert decrypt(after, key) == decrypt(blob, key)


def test_a_torn_slot_write_leaves_the_previous_table(tmp_path: Path) -> None:
    key = os.urandom(32)
    _, pub = envelope.generate_keypair()
    first = envelope.wrap(key, pub, RID, "2026-W50")
    path = tmp_path / "x.ccrec"
    path.write_bytes(build(b"abc", key, ff.Header(RID, os.urandom(7), 64), [first], 3))
    ff.rewrite_slots(path, [envelope.wrap(key, pub, RID, "2026-W51")])  # table B, gen 2
    data = bytearray(path.read_bytes())
    table_b = ff.HEADER.size + ff.SLOT_TABLE_SIZE
    data[table_b + 10 : table_b + 60] = bytes(50)  # the crash tore table B mid-slot
    path.write_bytes(bytes(data))
    with path.open("rb") as f:
        assert ff.read_slots(f) == [first]
    data[ff.HEADER.size + 50] ^= 0xFF  # and now A too
    path.write_bytes(bytes(data))
    with path.open("rb") as f, pytest.raises(ff.FormatError, match="both key slot tables"):
        ff.read_slots(f)


def test_slot_table_has_room_for_hybrid_slots_but_not_unbounded() -> None:
    hybrid = ff.KeySlot(envelope.SUITE_MLKEM768_X25519, "2026-W50", bytes(1120 + 48))
    assert len(ff.pack_slot_table([hybrid, hybrid, hybrid], 1)) == ff.SLOT_TABLE_SIZE
    with pytest.raises(ValueError, match="slot table holds"):
        ff.pack_slot_table([hybrid] * 4, 1)


def test_envelope_binds_recording_and_epoch() -> None:
    key = os.urandom(32)
    priv, pub = envelope.generate_keypair()
    slot = envelope.wrap(key, pub, RID, "2026-W50")
    assert len(slot.wrapped) == 80
    assert envelope.unwrap(slot, priv, RID) == key
    with pytest.raises(envelope.EnvelopeError, match="does not open"):
        envelope.unwrap(slot, priv, OTHER_RID)
    with pytest.raises(envelope.EnvelopeError, match="does not open"):
        envelope.unwrap(ff.KeySlot(slot.suite, "2026-W51", slot.wrapped), priv, RID)
    with pytest.raises(envelope.EnvelopeError, match="does not open"):
        envelope.unwrap(slot, envelope.generate_keypair()[0], RID)
    with pytest.raises(envelope.EnvelopeError, match="suite 2 is not supported"):
        envelope.unwrap(ff.KeySlot(2, slot.epoch, slot.wrapped), priv, RID)
