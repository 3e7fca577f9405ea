"""WAV inspection, header finality, header repair and the .raw wrapper."""

from __future__ import annotations

import io
import os
import struct
import wave
from pathlib import Path

import pytest

from recorder.finalize import wavcheck


def make_wav(path: Path, frames: bytes, rate: int = 8000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def inspect(path: Path) -> wavcheck.AudioInfo:
    with path.open("rb") as f:
        return wavcheck.inspect_wav(f, path.stat().st_size)


def test_a_closed_wav_is_described(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "a.wav", os.urandom(8000 * 2 * 3), rate=8000)
    info = inspect(path)
    assert (info.channels, info.sample_rate, info.sample_width) == (1, 8000, 2)
    assert (info.frames, info.duration_ms) == (24000, 3000)
    assert info.plaintext_size == path.stat().st_size and info.header == b""


def test_a_wav_with_a_chunk_after_the_data_is_final(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "a.wav", os.urandom(1000), channels=2, rate=48000)
    data = path.read_bytes() + b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"
    data = data[:4] + struct.pack("<I", len(data) - 8) + data[8:]
    path.write_bytes(data)
    assert inspect(path).channels == 2


@pytest.mark.parametrize("riff, data", [(0, 0), (36, 0), (None, 0), (0xFFFFFFFF, 0xFFFFFFFF)])
def test_sizes_that_do_not_describe_the_file_are_not_final(
    tmp_path: Path, riff: int | None, data: int
) -> None:
    path = make_wav(tmp_path / "a.wav", os.urandom(4000))
    raw = bytearray(path.read_bytes())
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    raw[40:44] = struct.pack("<I", data)
    path.write_bytes(bytes(raw))
    with pytest.raises(wavcheck.NotFinal, match="not closed"):
        inspect(path)


def test_growing_file_is_not_final(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "a.wav", os.urandom(4000))
    with path.open("ab") as f:
        f.write(os.urandom(320))  # the PBX goes on writing after a stale header
    with pytest.raises(wavcheck.NotFinal):
        inspect(path)


def test_repair_takes_the_sizes_from_the_file_size(tmp_path: Path) -> None:
    audio = os.urandom(16001)  # a crash left half a frame at the end
    path = make_wav(tmp_path / "a.wav", audio[:16000])
    raw = bytearray(path.read_bytes())
    raw[4:8] = raw[40:44] = bytes(4)  # FreeSWITCH-style: sizes 0 until RECORD_STOP
    path.write_bytes(bytes(raw) + audio[16000:])
    before = path.read_bytes()
    with path.open("rb") as f:
        info, rep = wavcheck.repaired(f, len(before))
    assert path.read_bytes() == before  # the PBX's file is not modified
    assert (rep.riff_before, rep.data_before, rep.data_after, rep.dropped_bytes) == (0, 0, 16000, 1)
    assert (info.frames, info.duration_ms, info.source_offset, info.source_size) == (
        8000,
        1000,
        44,
        16000,
    )
    blob = info.header + before[info.source_offset : info.source_offset + info.source_size]
    assert info.plaintext_size == len(blob)
    with wave.open(io.BytesIO(blob)) as w:
        assert w.readframes(8000) == audio[:16000]
    with io.BytesIO(blob) as f:
        assert wavcheck.inspect_wav(f, len(blob)).frames == 8000


def test_repair_refuses_a_file_without_a_format(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00" + os.urandom(100))
    with path.open("rb") as f, pytest.raises(wavcheck.AudioError, match="no format chunk"):
        wavcheck.repaired(f, path.stat().st_size)


def test_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"ID3" + os.urandom(100))
    with pytest.raises(wavcheck.AudioError, match="RIFF"):
        inspect(path)


def test_raw_is_wrapped_in_a_header_wave_reads(tmp_path: Path) -> None:
    raw = os.urandom(8000 * 4 + 3)  # stereo s16le, 1 s, and a partial frame
    info = wavcheck.inspect_raw(len(raw), 8000, 2)
    assert (info.frames, info.duration_ms, info.source_size) == (8000, 1000, 32000)
    blob = info.header + raw[: info.source_size]
    assert info.plaintext_size == len(blob)
    with wave.open(io.BytesIO(blob)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        assert w.readframes(8000) == raw[:32000]
    with pytest.raises(wavcheck.AudioError, match="sample rate"):
        wavcheck.inspect_raw(100, None, 2)
