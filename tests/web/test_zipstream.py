"""A zip written as it is sent (web/zipstream.py): what Python's and Info-ZIP's readers take,
piece by piece, and never a whole-looking zip when an entry's data fails."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from web.zipstream import Entry, zip_chunks

WHEN = datetime(2026, 12, 4, 10, 30, tzinfo=UTC)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_entries_come_out_whole_and_the_zip_in_pieces_as_their_data_arrives() -> None:
    wav = bytes(range(256)) * 1000  # 256,000 bytes
    sent = list(
        zip_chunks(
            [
                Entry("manifest.json", 2, [b"{}"]),
                Entry("recordings/a.wav", len(wav), pieces(wav, 65536)),
                Entry("recordings/empty.wav", 0, []),
            ],
            WHEN,
        )
    )
    assert len(sent) >= 5 and max(map(len, sent)) <= 65536 + 200
    z = zipfile.ZipFile(io.BytesIO(b"".join(sent)))
    assert z.testzip() is None
    assert z.namelist() == ["manifest.json", "recordings/a.wav", "recordings/empty.wav"]
    assert z.read("recordings/a.wav") == wav and z.read("recordings/empty.wav") == b""
    info = z.getinfo("recordings/a.wav")
    assert info.compress_type == zipfile.ZIP_STORED and info.date_time == (2026, 12, 4, 10, 30, 0)
    assert info.external_attr >> 16 == 0o600


def test_an_entry_whose_data_fails_leaves_no_zip_a_reader_takes() -> None:
    """The error goes up; what was sent has no central directory, so a download cut this way
    is never mistaken for a whole (but shorter) export."""

    def failing() -> Iterator[bytes]:
        yield b"x" * 70000
        raise ValueError("segment 2 does not authenticate")

    sent: list[bytes] = []
    with pytest.raises(ValueError, match="authenticate"):
        for piece in zip_chunks([Entry("a.wav", 140000, failing())], WHEN):
            sent.append(piece)
    assert sent
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(b"".join(sent)))
