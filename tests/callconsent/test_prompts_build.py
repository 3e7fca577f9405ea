"""`callconsent prompts build`: espeak-ng speech and admins' recordings as 8 kHz mono WAV,
readable by the PBX, in the layout the prompt catalog reads."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib
import wave
from pathlib import Path

import pytest

from callconsent import prompts_build
from callconsent.cli import main
from consent_ivr.policy import PROMPT_IDS
from recorder.live.prompts import PromptCatalog

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make installs it)"
)
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (make installs it)"
)


def params(path: Path) -> tuple[int, int, int]:
    with wave.open(str(path)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate()


@pytest.mark.parametrize("language", prompts_build.LANGUAGES)
def test_every_language_has_every_text(language: str) -> None:
    t = prompts_build.texts(language)
    assert set(t.prompts) == set(PROMPT_IDS)
    assert set(t.agent) == set(prompts_build.AGENT_PROMPTS)
    assert "{accept}" in t.prompts["consent"] and "{decline}" in t.prompts["consent"]
    raw = (Path(prompts_build.__file__).parent / "prompt_texts" / f"{language}.toml").read_text()
    assert tomllib.loads(raw)["voice"]


@needs_espeak
def test_build_speaks_8khz_mono_prompts_the_pbx_can_read(tmp_path: Path) -> None:
    out = tmp_path / "prompts"
    assert (
        main(["prompts", "build", "--out", str(out), "--language", "en", "--language", "zh"]) == 0
    )
    for language in ("en", "zh"):
        for prompt_id in (*PROMPT_IDS, *prompts_build.AGENT_PROMPTS, *prompts_build.TONES):
            path = out / language / f"{prompt_id}.wav"
            assert params(path) == (1, 2, 8000), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE((out / language).stat().st_mode) == 0o755
    catalog = PromptCatalog(out)
    assert catalog.languages == {"en", "zh"}
    with wave.open(str(out / "en" / "consent.wav")) as w:
        assert w.getnframes() > 8000 * 5  # a real sentence, not a stub


@needs_espeak
def test_an_admins_recording_is_kept_and_converted(tmp_path: Path) -> None:
    out = tmp_path / "prompts"
    source = tmp_path / "mine.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(source), "Eigene Ansage"], check=True)
    assert (
        main(
            [
                "prompts",
                "build",
                "--out",
                str(out),
                "--from",
                str(source),
                "--prompt",
                "consent",
                "--language",
                "de",
            ]
        )
        == 0
    )
    own = (out / "de" / "consent.wav").read_bytes()
    assert params(out / "de" / "consent.wav") == (1, 2, 8000)
    _, kept = prompts_build.build(out, ("de",))
    assert out / "de" / "consent.wav" in kept  # a rebuild never overwrites it
    assert (out / "de" / "consent.wav").read_bytes() == own
    prompts_build.build(out, ("de",), force=True)
    assert (out / "de" / "consent.wav").read_bytes() != own


@needs_ffmpeg
def test_any_common_format_converts(tmp_path: Path) -> None:
    mp3 = tmp_path / "mine.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-ar",
            "44100",
            "-ac",
            "2",
            str(mp3),
        ],
        check=True,
    )
    path = prompts_build.convert(mp3, tmp_path / "prompts", "thanks", "fr")
    assert params(path) == (1, 2, 8000)
    with wave.open(str(path)) as w:
        assert 7000 < w.getnframes() < 9000


def test_wrong_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(prompts_build.PromptBuildError, match="unknown prompt"):
        prompts_build.convert(tmp_path / "x.wav", tmp_path, "hello", "en")
    with pytest.raises(prompts_build.PromptBuildError, match="not a file"):
        prompts_build.convert(tmp_path / "x.wav", tmp_path, "consent", "en")
    with pytest.raises(prompts_build.PromptBuildError, match="no texts"):
        prompts_build.texts("xx")
    assert main(["prompts", "build", "--out", str(tmp_path), "--from", "x.wav"]) != 0
