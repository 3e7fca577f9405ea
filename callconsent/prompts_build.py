"""The prompts callers (and agents) hear: spoken from the texts in ``prompt_texts/<lang>.toml``
with espeak-ng, or converted from an admin's own recording with pydub (ffmpeg reads any common
format), and written as 8 kHz mono 16-bit WAV in the layout of :mod:`recorder.live.prompts`:
``<prompt dir>/<language>/<prompt id>.wav``.

The PBX plays them by absolute path, as its own account, so directories are 0755 and files
0644: prompts hold no personal data. Each file's SHA-256 goes into the consent evidence when a
caller hears it (the catalog hashes them), so replacing a prompt is visible in the evidence.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import struct
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from consent_ivr.policy import PROMPT_IDS

LANGUAGES = ("en", "de", "fr", "es", "nl", "nb", "cs", "zh")
AGENT_PROMPTS = (
    "agent-status-granted",
    "agent-status-declined",
    "agent-status-no_input",
    "agent-status-withdrawn",
    "agent-status-not_required",
    "agent-status-unavailable",
)
TONES = {"agent-done": ((880, 120),), "agent-refused": ((300, 200), (0, 80), (300, 200))}
RATE = 8000
DIR_MODE, FILE_MODE = 0o755, 0o644


class PromptBuildError(Exception):
    """A prompt could not be made; the message says what is missing."""


@dataclass(frozen=True)
class PromptTexts:
    language: str
    voice: str
    prompts: dict[str, str]
    agent: dict[str, str]


def texts(language: str) -> PromptTexts:
    try:
        raw = resources.files("callconsent").joinpath("prompt_texts", f"{language}.toml")
        data = tomllib.loads(raw.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptBuildError(
            f"no texts for language {language!r}; available: {', '.join(LANGUAGES)}"
        ) from None
    return PromptTexts(language, data["voice"], dict(data["prompts"]), dict(data.get("agent", {})))


def speak(text: str, voice: str) -> bytes:
    """espeak-ng's WAV of ``text`` (22 kHz), to be resampled."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise PromptBuildError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(  # noqa: S603 - our texts and voices, passed as arguments, no shell
            [espeak, "-v", voice, "-s", "150", "-w", str(out), text],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


def to_prompt_wav(source: bytes | Path, fmt: str | None = None) -> bytes:
    """Any audio pydub (ffmpeg) reads → 8 kHz mono 16-bit WAV bytes."""
    from pydub import AudioSegment

    try:
        if isinstance(source, Path):
            segment = AudioSegment.from_file(source, format=fmt)
        else:
            segment = AudioSegment.from_file(io.BytesIO(source), format=fmt or "wav")
    except Exception as exc:  # pydub raises several kinds, ffmpeg's CouldntDecodeError among them
        raise PromptBuildError(f"cannot read the audio: {exc}") from None
    segment = segment.set_channels(1).set_frame_rate(RATE).set_sample_width(2)
    out = io.BytesIO()
    segment.export(out, format="wav")
    return out.getvalue()


def tone_wav(parts: tuple[tuple[int, int], ...]) -> bytes:
    """A short beep pattern for agents: (Hz, ms) pairs, 0 Hz is a pause."""
    samples = bytearray()
    for freq, ms in parts:
        n = RATE * ms // 1000
        for i in range(n):
            value = int(6000 * math.sin(2 * math.pi * freq * i / RATE)) if freq else 0
            samples += struct.pack("<h", value)
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(samples))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(samples))
    )
    return header + bytes(samples)


def write_prompt(prompt_dir: Path, language: str, prompt_id: str, wav: bytes) -> Path:
    """Write atomically, readable by the PBX."""
    directory = prompt_dir / language
    for d in (prompt_dir, directory):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, DIR_MODE)
    path = directory / f"{prompt_id}.wav"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(wav)
    os.chmod(tmp, FILE_MODE)
    tmp.replace(path)
    return path


def build(
    prompt_dir: Path,
    languages: tuple[str, ...] = LANGUAGES,
    *,
    accept: str = "1",
    decline: str = "2",
    force: bool = False,
) -> tuple[list[Path], list[Path]]:
    """Speak every prompt of every language. Existing files are kept (an admin's own
    recording is never overwritten) unless ``force``. Returns (written, kept)."""
    written: list[Path] = []
    kept: list[Path] = []
    for language in languages:
        t = texts(language)
        items = [(pid, t.prompts[pid]) for pid in PROMPT_IDS]
        items += [(pid, t.agent[pid]) for pid in AGENT_PROMPTS if pid in t.agent]
        for prompt_id, text in items:
            path = prompt_dir / language / f"{prompt_id}.wav"
            if path.exists() and not force:
                kept.append(path)
                continue
            spoken = speak(text.format(accept=accept, decline=decline), t.voice)
            written.append(write_prompt(prompt_dir, language, prompt_id, to_prompt_wav(spoken)))
        for name, parts in TONES.items():
            path = prompt_dir / language / f"{name}.wav"
            if not path.exists() or force:
                written.append(write_prompt(prompt_dir, language, name, tone_wav(parts)))
    return written, kept


def convert(source: Path, prompt_dir: Path, prompt_id: str, language: str) -> Path:
    """An admin's recording (wav, mp3, ogg, m4a, flac …) as prompt ``prompt_id``."""
    if prompt_id not in (*PROMPT_IDS, *AGENT_PROMPTS, *TONES):
        raise PromptBuildError(
            f"unknown prompt {prompt_id!r}; the prompts are {', '.join(PROMPT_IDS)} "
            f"(and for agents {', '.join((*AGENT_PROMPTS, *TONES))})"
        )
    if not source.is_file():
        raise PromptBuildError(f"{source} is not a file")
    return write_prompt(prompt_dir, language, prompt_id, to_prompt_wav(source))
