"""The encrypted recording file (``<id>.ccrec``): segmented AES-256-GCM ("STREAM"), with the
data key in key slots kept outside the authenticated header. Spec and test vectors:
``docs/recording-format.md``.

Layout::

    header (40 bytes, authenticated: the AAD of every segment)
    slot area (8192 bytes: two 4096-byte slot tables, A and B; NOT authenticated)
    segments: AES-256-GCM(data key, nonce = prefix(7) ‖ counter(4, BE) ‖ last(1), header)

Why hand-written: no maintained library offers a seekable streaming AEAD file whose key slots
can be rewritten without touching the audio. Tink's streaming AEAD derives its keys from a
keyset and has no public-key envelope; age authenticates its recipient stanzas with the header
MAC, so a re-wrap would change every byte after it. The primitive is ``cryptography``'s AESGCM;
the construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as Tink and age use it:
truncation, reordering, bit flips and header edits all fail a tag.

A re-wrap (legal hold, rotation) writes the inactive slot table with a higher generation and
fsyncs; a torn write leaves the other table valid, so the change is small, in place and
crash-safe. ``ciphertext_sha256`` in the store covers the file without its slot area, so it
stays valid across re-wraps.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\x89CCREC\r\n"
VERSION = 1
SEGMENT_SIZE = 64 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
NONCE_PREFIX_SIZE = 7
HEADER = struct.Struct(">8sBI16s7sI")  # magic, version, segment size, id, nonce prefix, slots
SLOT_TABLE_SIZE = 4096
SLOT_AREA_SIZE = 2 * SLOT_TABLE_SIZE
_TABLE_HEAD = struct.Struct(">IB")  # generation, slot count
_DIGEST = 32
MIN_SEGMENT, MAX_SEGMENT = 16, 16 * 1024 * 1024
SUFFIX = ".ccrec"


class FormatError(ValueError):
    """Not a recording file we can read (wrong magic, unknown version, damaged layout)."""


class TamperedError(ValueError):
    """A segment did not authenticate: the file was altered, truncated or reordered, or the
    data key is wrong. Nothing decrypted from it may be trusted."""


@dataclass(frozen=True, slots=True)
class KeySlot:
    """One wrapped copy of the data key: ``suite`` says how it is wrapped (see envelope),
    ``epoch`` which key it is wrapped to."""

    suite: int
    epoch: str
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class Header:
    recording_id: str
    nonce_prefix: bytes
    segment_size: int = SEGMENT_SIZE
    version: int = VERSION
    slot_area_size: int = SLOT_AREA_SIZE

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.version,
            self.segment_size,
            uuid.UUID(self.recording_id).bytes,
            self.nonce_prefix,
            self.slot_area_size,
        )

    @property
    def data_offset(self) -> int:
        return HEADER.size + self.slot_area_size

    @classmethod
    def parse(cls, data: bytes) -> Header:
        if len(data) < HEADER.size or not data.startswith(MAGIC):
            raise FormatError("not a callconsent recording file (magic bytes differ)")
        _, version, seg, rid, prefix, area = HEADER.unpack_from(data)
        if version != VERSION:
            raise FormatError(f"recording file version {version} is not supported (only 1)")
        if not MIN_SEGMENT <= seg <= MAX_SEGMENT:
            raise FormatError(f"segment size {seg} is out of range")
        if area != SLOT_AREA_SIZE:
            raise FormatError(f"slot area of {area} bytes is not supported")
        return cls(str(uuid.UUID(bytes=rid)), prefix, seg, version, area)


def nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


# -- key slots -----------------------------------------------------------------------------


def pack_slot_table(slots: list[KeySlot], generation: int) -> bytes:
    body = bytearray(_TABLE_HEAD.pack(generation, len(slots)))
    for s in slots:
        epoch = s.epoch.encode("ascii")
        body += struct.pack(">BB", s.suite, len(epoch)) + epoch
        body += struct.pack(">H", len(s.wrapped)) + s.wrapped
    room = SLOT_TABLE_SIZE - _DIGEST
    if len(body) > room:
        raise ValueError(f"key slots need {len(body)} bytes; a slot table holds {room}")
    body += bytes(room - len(body))
    return bytes(body) + hashlib.sha256(body).digest()


def _parse_slot_table(table: bytes) -> tuple[int, list[KeySlot]] | None:
    body, digest = table[:-_DIGEST], table[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        return None  # never written, or torn by a crash: the other table holds
    generation, count = _TABLE_HEAD.unpack_from(body)
    pos, slots = _TABLE_HEAD.size, []
    for _ in range(count):
        suite, elen = struct.unpack_from(">BB", body, pos)
        epoch = body[pos + 2 : pos + 2 + elen].decode("ascii")
        pos += 2 + elen
        (wlen,) = struct.unpack_from(">H", body, pos)
        slots.append(KeySlot(suite, epoch, body[pos + 2 : pos + 2 + wlen]))
        pos += 2 + wlen
    return generation, slots


def _current_table(area: bytes) -> tuple[int, int, list[KeySlot]]:
    """(index of the live table, its generation, its slots)."""
    found = [
        (parsed[0], i, parsed[1])
        for i in (0, 1)
        if (parsed := _parse_slot_table(area[i * SLOT_TABLE_SIZE : (i + 1) * SLOT_TABLE_SIZE]))
    ]
    if not found:
        raise FormatError("both key slot tables are damaged")
    generation, index, slots = max(found)
    return index, generation, slots


def read_slots(f: BinaryIO) -> list[KeySlot]:
    f.seek(HEADER.size)
    return _current_table(f.read(SLOT_AREA_SIZE))[2]


def rewrite_slots(path: str | os.PathLike[str], slots: list[KeySlot]) -> None:
    """Replace the key slots in place (re-wrap): the inactive table gets the next generation,
    then fsync. The header and the audio are not touched."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "r+b", closefd=False) as f:
            Header.parse(f.read(HEADER.size))
            index, generation, _ = _current_table(f.read(SLOT_AREA_SIZE))
            other = 1 - index
            os.pwrite(
                fd,
                pack_slot_table(slots, generation + 1),
                HEADER.size + other * SLOT_TABLE_SIZE,
            )
            os.fsync(fd)
    finally:
        os.close(fd)


# -- segments ------------------------------------------------------------------------------


class StreamEncryptor:
    """Feed plaintext in any chunk sizes; get the file's bytes back. Holds at most one
    segment, so memory is constant whatever the recording's length."""

    def __init__(self, key: bytes, header: Header, slots: list[KeySlot]) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("the data key must be 32 bytes")
        self._aead = AESGCM(key)
        self._aad = header.pack()
        self._prefix = header.nonce_prefix
        self._seg = header.segment_size
        self._buf = bytearray()
        self._counter = 0
        self.header = self._aad  # what the file starts with; then the slot area
        self.slot_area = pack_slot_table(slots, 1) + bytes(SLOT_TABLE_SIZE)

    def update(self, data: bytes | memoryview) -> bytes:
        """Ciphertext of every segment that is now known not to be the last."""
        self._buf += data
        out = []
        seg = self._seg
        done = 0
        while len(self._buf) - done > seg:  # keep the tail: it may be the last segment
            out.append(self._seal(memoryview(self._buf)[done : done + seg], last=False))
            done += seg
        if done:
            del self._buf[:done]
        return b"".join(out)

    def finalize(self) -> bytes:
        """The last segment (possibly empty, possibly full)."""
        last = self._seal(bytes(self._buf), last=True)
        self._buf.clear()
        return last

    def _seal(self, chunk: bytes | memoryview, last: bool) -> bytes:
        ct = self._aead.encrypt(nonce(self._prefix, self._counter, last), chunk, self._aad)
        self._counter += 1
        return ct


def read_header(f: BinaryIO) -> Header:
    f.seek(0)
    return Header.parse(f.read(HEADER.size))


def segment_layout(header: Header, file_size: int) -> tuple[int, int]:
    """(number of segments, ciphertext length of the last one); raises if truncated."""
    payload = file_size - header.data_offset
    stride = header.segment_size + TAG_SIZE
    if payload < TAG_SIZE:
        raise TamperedError("the file ends before its first segment: truncated")
    count = -(-payload // stride)
    last_len = payload - (count - 1) * stride
    if last_len < TAG_SIZE:
        raise TamperedError("the last segment is shorter than a tag: truncated or extended")
    return count, last_len


def decrypt_segments(f: BinaryIO, key: bytes, header: Header) -> Iterator[bytes]:
    """Plaintext segment by segment, each authenticated before it is yielded. The caller
    must treat everything as untrusted until the iterator ends without an error (only the
    last segment proves nothing was cut off)."""
    f.seek(0, os.SEEK_END)
    count, last_len = segment_layout(header, f.tell())
    aead, aad, stride = AESGCM(key), header.pack(), header.segment_size + TAG_SIZE
    f.seek(header.data_offset)
    for i in range(count):
        last = i == count - 1
        chunk = f.read(last_len if last else stride)
        try:
            yield aead.decrypt(nonce(header.nonce_prefix, i, last), chunk, aad)
        except InvalidTag:
            raise TamperedError(
                f"segment {i} of {count} does not authenticate: the file was altered, "
                "truncated or reordered, or the key is wrong"
            ) from None


def ciphertext_digest(f: BinaryIO, header: Header, block: int = 1 << 20) -> tuple[int, str]:
    """(size, SHA-256) of the file without its slot area: what a re-wrap leaves unchanged."""
    h = hashlib.sha256()
    f.seek(0)
    h.update(f.read(HEADER.size))
    f.seek(header.data_offset)
    size = HEADER.size + header.slot_area_size
    while chunk := f.read(block):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()
