"""Is this spool file a finished recording? The WAV header, read with the stdlib ``wave``
module without loading the audio; the header's sizes checked against the file's size; the
repair of a header a crashed PBX never finalized; the WAV header for a headerless ``.raw``.

A PBX writes a WAV's sizes only when it closes the file (FreeSWITCH leaves them 0 until
``RECORD_STOP``; Asterisk patches them on close), so sizes that disagree with the file mean
"still being written" (:class:`NotFinal`) — unless the call is over and the file has stopped
changing, when the finalizer repairs the header from the size (a PBX crash must not strand
audio).
"""

from __future__ import annotations

import struct
import wave
from dataclasses import dataclass
from typing import BinaryIO

_CHUNK = struct.Struct("<4sI")
_PCM_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


class AudioError(ValueError):
    """Not a recording we can keep as it is (not a PCM WAV, no format chunk, …)."""


class NotFinal(Exception):
    """The WAV header's sizes do not match the file: the PBX has not closed it (yet)."""


@dataclass(frozen=True, slots=True)
class AudioInfo:
    channels: int
    sample_rate: int
    sample_width: int
    frames: int
    header: bytes  # what the finalizer puts first (a .raw's or a repaired header), else b""
    source_size: int  # bytes taken from the spool file ...
    source_offset: int = 0  # ... starting here

    @property
    def duration_ms(self) -> int:
        return self.frames * 1000 // self.sample_rate if self.sample_rate else 0

    @property
    def plaintext_size(self) -> int:
        return len(self.header) + self.source_size


@dataclass(frozen=True, slots=True)
class _Layout:
    riff_size: int
    data_offset: int
    data_size: int
    end: int  # where the chunk walk ended


def _walk(f: BinaryIO, file_size: int) -> _Layout:
    """Follow the RIFF chunks as their headers declare them, up to the data chunk (whose
    declared size may be wrong) and, if it fits, past it."""
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise AudioError("not a WAV file (no RIFF/WAVE header)")
    riff_size = struct.unpack_from("<I", head, 4)[0]
    pos, data_offset, data_size = 12, -1, 0
    while pos + 8 <= file_size:
        f.seek(pos)
        cid, size = _CHUNK.unpack(f.read(8))
        if cid == b"data" and data_offset < 0:
            data_offset, data_size = pos + 8, size
        pos += 8 + size + (size & 1)
        if pos > file_size:
            break
    if data_offset < 0:
        raise AudioError("WAV file without a data chunk")
    return _Layout(riff_size, data_offset, data_size, pos)


def inspect_wav(f: BinaryIO, file_size: int) -> AudioInfo:
    """Format, channels, rate and length of a closed WAV; :class:`NotFinal` if its sizes
    do not describe the file."""
    layout = _walk(f, file_size)
    end_ok = layout.end == file_size or (
        layout.end == file_size + 1 and layout.data_size & 1  # odd data without its pad byte
    )
    if layout.riff_size != file_size - 8 or not end_ok:
        raise NotFinal(
            f"WAV header says RIFF {layout.riff_size} / data {layout.data_size} bytes, "
            f"the file has {file_size}: not closed"
        )
    f.seek(0)
    try:
        with wave.open(f, "rb") as w:
            params = w.getparams()
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a PCM WAV the finalizer can keep: {exc}") from None
    return AudioInfo(
        params.nchannels, params.framerate, params.sampwidth, params.nframes, b"", file_size
    )


def inspect_raw(file_size: int, sample_rate: int | None, channels: int) -> AudioInfo:
    """A headerless s16le file (Asterisk ``MixMonitor`` ``D``), described by the rate and
    channels stored with its recording; a trailing partial frame is left out."""
    if not sample_rate or channels < 1:
        raise AudioError("a .raw recording needs its sample rate and channels in the store")
    block = 2 * channels
    data = file_size - file_size % block
    return AudioInfo(
        channels, sample_rate, 2, data // block, pcm_header(sample_rate, channels, data), data
    )


def pcm_header(sample_rate: int, channels: int, data_size: int, sample_width: int = 2) -> bytes:
    """The canonical 44-byte header of a 16-bit PCM WAV."""
    block = channels * sample_width
    return _PCM_HEADER.pack(
        b"RIFF",
        36 + data_size,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        sample_rate,
        sample_rate * block,
        block,
        8 * sample_width,
        b"data",
        data_size,
    )


@dataclass(frozen=True, slots=True)
class Repair:
    """What a header repair changed, for the audit row."""

    riff_before: int
    data_before: int
    data_after: int
    dropped_bytes: int  # a trailing partial frame


def repaired(f: BinaryIO, file_size: int) -> tuple[AudioInfo, Repair]:
    """The recording with its header's sizes taken from the file's size (a trailing partial
    frame dropped). The spool file is not modified (it belongs to the PBX): the corrected
    header is what the finalizer encrypts in front of the audio. Only for a file whose call is
    over and that stopped changing."""
    layout = _walk(f, file_size)
    channels, width, rate = _find_fmt(f, layout.data_offset)
    block = channels * width
    data = (file_size - layout.data_offset) // block * block
    f.seek(0)
    head = bytearray(f.read(layout.data_offset))
    head[4:8] = struct.pack("<I", layout.data_offset + data - 8)
    head[-4:] = struct.pack("<I", data)
    info = AudioInfo(channels, rate, width, data // block, bytes(head), data, layout.data_offset)
    dropped = file_size - layout.data_offset - data
    return info, Repair(layout.riff_size, layout.data_size, data, dropped)


def _find_fmt(f: BinaryIO, data_offset: int) -> tuple[int, int, int]:
    """(channels, bytes per sample, rate) from the fmt chunk before the data chunk."""
    pos = 12
    while pos + 8 < data_offset:
        f.seek(pos)
        cid, size = _CHUNK.unpack(f.read(8))
        if cid == b"fmt " and size >= 16:
            tag, channels, rate, _bps, _align, bits = struct.unpack("<HHIIHH", f.read(16))
            if tag != 1 or channels < 1 or bits not in (8, 16, 24, 32):
                raise AudioError(f"cannot repair a WAV of format {tag}, {bits} bits")
            return channels, bits // 8, rate
        pos += 8 + size + (size & 1)
    raise AudioError("cannot repair: the WAV has no format chunk before its data")
