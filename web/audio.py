"""Recordings decrypted on the fly for a player: a byte range of the original WAV maps onto
the segments that hold it, and only those are read, authenticated and decrypted, straight
into the response (never to disk). See ``docs/recording-format.md``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recorder.vault import directory as vault
from recorder.vault import fileformat as ff

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    """A ``Range`` header we cannot serve (malformed, several ranges, beyond the end)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None for the whole file; raises :class:`RangeNotSatisfiable` for what we refuse."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable("only one range of the form bytes=START-END is served")
    first, last = m.group(1), m.group(2)
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable("an empty suffix range")
        return ByteRange(max(size - n, 0), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"the range is outside the recording's {size} bytes")
    return ByteRange(start, end)


class ClearAudio:
    """One recording opened for reading: its data key unwrapped, its layout known."""

    def __init__(
        self, path: Path, recording_id: str, private_key_for: Callable[[str], bytes]
    ) -> None:
        self._f = vault.open_ciphertext(path)
        try:
            key = vault.data_key(self._f, recording_id, private_key_for)
            self.header = ff.read_header(self._f)
            self._count, self._last_len = ff.segment_layout(
                self.header, os.fstat(self._f.fileno()).st_size
            )
        except BaseException:
            self._f.close()
            raise
        self._aead = AESGCM(key)
        self._aad = self.header.pack()
        self._seg = self.header.segment_size
        self.size = (self._count - 1) * self._seg + self._last_len - ff.TAG_SIZE

    def close(self) -> None:
        self._f.close()

    def segment(self, index: int) -> bytes:
        """Segment ``index`` decrypted and authenticated (raises TamperedError)."""
        last = index == self._count - 1
        stride = self._seg + ff.TAG_SIZE
        length = self._last_len if last else stride
        chunk = os.pread(self._f.fileno(), length, self.header.data_offset + index * stride)
        try:
            return self._aead.decrypt(
                ff.nonce(self.header.nonce_prefix, index, last), chunk, self._aad
            )
        except InvalidTag:
            raise ff.TamperedError(
                f"segment {index} of {self._count} does not authenticate"
            ) from None

    def read(self, wanted: ByteRange | None) -> Iterator[bytes]:
        """The plaintext bytes of ``wanted`` (all when None), segment by segment; closes the
        file at the end."""
        r = wanted or ByteRange(0, self.size - 1)
        try:
            if self.size == 0:
                return
            for i in range(r.start // self._seg, r.end // self._seg + 1):
                data = self.segment(i)
                base = i * self._seg
                yield data[max(r.start - base, 0) : r.end - base + 1]
        finally:
            self.close()
