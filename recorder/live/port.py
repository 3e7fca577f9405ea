"""What an adapter implements for one call on its PBX (:class:`CallControl`), the files it
records into, and the one error a gone channel raises. The call book and the withdrawals both
speak this, and the adapters implement it; it imports nothing of theirs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import consent_ivr as c
from recorder.live.prompts import PromptFile


class CallGone(Exception):
    """The PBX says the channel is gone (hangup, 511): feed ``HungUp`` and stop acting."""


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """Where and how the PBX will write a recording; always named by our recording id."""

    path: Path
    fmt: str = "wav"  # wav | raw (headerless s16le, e.g. Asterisk MixMonitor ``D``)
    channels: int = 1
    sample_rate: int | None = None


class CallControl(Protocol):
    """What an adapter can do to one call on its PBX. Raise :class:`CallGone` when the
    channel is gone; ``play`` and ``collect`` report a hangup as a ``HungUp`` event instead."""

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        """Play; return PromptFinished, DigitReceived (barge-in), PromptFailed or HungUp."""

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        """Wait for a digit; return DigitReceived, InputTimedOut or HungUp."""

    async def set_variables(self, variables: Mapping[str, str]) -> None: ...

    def recording_file(self, recording_id: str, stereo: bool) -> RecordingFile: ...

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        """Start recording the customer leg; return the PBX's handle (MixMonitorID, path)."""

    async def pause_recording(self, recording_id: str, pbx_ref: str | None) -> None: ...

    async def resume_recording(self, recording_id: str, pbx_ref: str | None) -> None: ...

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None: ...

    async def allow_monitoring(self) -> None: ...

    async def stop_monitoring(self) -> None: ...

    async def reject(self, verb: str, reason: str) -> None:
        """Tell the agent a command was refused (a tone); log it."""

    async def hand_back(self) -> None:
        """The dialogue is over: return the call to the dialplan (``Continue``)."""
