"""A scripted fake PBX for the call book (answers plays and collects from a script, records
every call made to it), and the prompt files a call book needs."""

from __future__ import annotations

import wave
from collections.abc import Mapping
from pathlib import Path

import consent_ivr as c
from recorder.live.port import CallGone, RecordingFile
from recorder.live.prompts import PromptCatalog, PromptFile


def make_prompts(root: Path, languages: tuple[str, ...] = ("en", "de")) -> PromptCatalog:
    for lang in languages:
        (root / lang).mkdir(parents=True)
        for i, prompt_id in enumerate(c.policy.PROMPT_IDS):
            with wave.open(str(root / lang / f"{prompt_id}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(bytes([i]) * 1600)
    return PromptCatalog(root)


class FakePbx:
    """Answers plays and collects from a script; records every call made to it."""

    def __init__(
        self, script: list[c.Event], gone_on: str | None = None, fail_on: str | None = None
    ) -> None:
        self.script = list(script)
        self.calls: list[tuple] = []
        self.gone_on, self.fail_on = gone_on, fail_on

    def _log(self, *entry: object) -> None:
        self.calls.append(entry)
        if self.gone_on == entry[0]:
            raise CallGone("channel gone")
        if self.fail_on == entry[0]:
            raise RuntimeError(f"the PBX refused {entry[0]}")

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        self._log("play", prompt.prompt_id, file.language)
        return self.script.pop(0) if self.script else c.PromptFinished(prompt.prompt_id)

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        self._log("collect", collect.valid)
        return self.script.pop(0) if self.script else c.InputTimedOut()

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        self._log("set", dict(variables))

    def recording_file(self, recording_id: str, stereo: bool) -> RecordingFile:
        return RecordingFile(Path(f"/spool/{recording_id}.wav"))

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        self._log("start", recording_id)
        return f"0x{len(self.calls):04x}"

    async def pause_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        self._log("pause", recording_id, pbx_ref)

    async def resume_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        self._log("resume", recording_id, pbx_ref)

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        self._log("stop", recording_id, pbx_ref)

    async def allow_monitoring(self) -> None:
        self._log("allow_monitoring")

    async def stop_monitoring(self) -> None:
        self._log("stop_monitoring")

    async def reject(self, verb: str, reason: str) -> None:
        self._log("reject", verb, reason)

    async def hand_back(self) -> None:
        self._log("hand_back")
