"""Events: what the adapter tells the machine happened on the call.

Small frozen classes, as in h11. An adapter builds them from PBX replies and feeds them to
:meth:`consent_ivr.ConsentCall.handle`; it never decides anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

DTMF_DIGITS = frozenset("0123456789*#ABCD")

AgentVerb = Literal["start", "pause", "resume", "stop", "discard"]
AGENT_VERBS: tuple[AgentVerb, ...] = ("start", "pause", "resume", "stop", "discard")


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class CallAnswered(Event):
    """The call is up and media flows: the dialogue may begin."""


@dataclass(frozen=True, slots=True)
class PromptFinished(Event):
    """The prompt last asked for played to its end with no barge-in digit."""

    prompt_id: str


@dataclass(frozen=True, slots=True)
class PromptFailed(Event):
    """The prompt could not be played (file missing, unsupported format) on a live channel."""

    prompt_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DigitReceived(Event):
    """The caller pressed a DTMF key."""

    digit: str

    def __post_init__(self) -> None:
        if self.digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {self.digit!r}")


@dataclass(frozen=True, slots=True)
class InputTimedOut(Event):
    """The digit timeout passed with no key pressed."""


@dataclass(frozen=True, slots=True)
class AgentAnswered(Event):
    """An agent answered (the customer leg is bridged); ``record_from = agent_answer`` starts."""

    agent: str | None = None


@dataclass(frozen=True, slots=True)
class RecordingStarted(Event):
    """The PBX confirmed that recording ``recording_id`` runs."""

    recording_id: str


@dataclass(frozen=True, slots=True)
class RecordingStopped(Event):
    """The PBX closed recording ``recording_id`` (it may still need its header finalised)."""

    recording_id: str


@dataclass(frozen=True, slots=True)
class AgentCommand(Event):
    """An agent (feature code, CLI) asked to start, pause, resume, stop or discard recording."""

    verb: AgentVerb
    agent: str | None = None

    def __post_init__(self) -> None:
        if self.verb not in AGENT_VERBS:
            raise ValueError(f"unknown agent command {self.verb!r}; expected one of {AGENT_VERBS}")


@dataclass(frozen=True, slots=True)
class CallerWithdrew(Event):
    """The caller took consent back mid-call (the configured withdraw key, or an IVR option).

    ``at`` is when, if the adapter learnt of it later (the PBX's mark of a key pressed while
    callconsent was away); then ``cause`` says so in the evidence."""

    at: datetime | None = None
    cause: str = "caller_withdrew"


@dataclass(frozen=True, slots=True)
class HungUp(Event):
    """The customer leg is gone. The PBX closes any recording on it by itself."""
