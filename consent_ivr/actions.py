"""Actions: what the machine asks the adapter to do on the PBX.

The adapter performs them in order and feeds back what happened as events. There is no
``Hangup`` action: a caller who declines or stays silent is never hung up (GDPR Art. 7(4));
the call goes on, unrecorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from consent_ivr.evidence import ConsentEvidence
from consent_ivr.status import ConsentStatus


@dataclass(frozen=True, slots=True)
class Action:
    """Base class of every action."""


@dataclass(frozen=True, slots=True)
class PlayPrompt(Action):
    """Play ``prompt_id`` in ``language``; any digit in ``barge_in`` interrupts it.

    A digit that interrupts comes back as ``DigitReceived``; a prompt that ends comes back as
    ``PromptFinished``; one that cannot play as ``PromptFailed``.
    """

    prompt_id: str
    language: str
    barge_in: str = ""


@dataclass(frozen=True, slots=True)
class CollectDigit(Action):
    """Wait up to ``timeout_ms`` for one of ``valid``: ``DigitReceived`` or ``InputTimedOut``."""

    timeout_ms: int
    valid: str


@dataclass(frozen=True, slots=True)
class StartRecording(Action):
    """Start recording the customer leg into the spool file named by ``recording_id``.

    The file name is the adapter's business (it knows the spool and the PBX's formats); it is
    always derived from ``recording_id``, never from caller data.
    """

    recording_id: str
    stereo: bool = False


@dataclass(frozen=True, slots=True)
class PauseRecording(Action):
    """Mute the recording (card data): the paused stretch is silence in the file."""

    recording_id: str


@dataclass(frozen=True, slots=True)
class ResumeRecording(Action):
    recording_id: str


@dataclass(frozen=True, slots=True)
class StopRecording(Action):
    """Stop and close this recording, addressed by its id (never "all on the channel")."""

    recording_id: str


@dataclass(frozen=True, slots=True)
class DiscardRecording(Action):
    """Destroy whatever was recorded under ``recording_id``: it must never be kept."""

    recording_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetVariables(Action):
    """Set channel variables in the neutral vocabulary (``CONSENT_STATUS``, ``CONSENT_ID``,
    ``CONSENT_RECORDING_ID``); the adapter maps names to its PBX (inheritance, export)."""

    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogConsent(Action):
    """Persist the call's one consent decision before anything is recorded."""

    evidence: ConsentEvidence


@dataclass(frozen=True, slots=True)
class LogStatusChange(Action):
    """Persist a later change of the consent status (withdrawal, agent discard or attestation)."""

    status: ConsentStatus
    cause: str
    at: datetime
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class AllowMonitoring(Action):
    """Consent covers live listening: admit supervisors (Asterisk SPYGROUP, FS eavesdrop_group)."""


@dataclass(frozen=True, slots=True)
class StopMonitoring(Action):
    """Consent no longer covers listening: remove the group and end active listeners."""


@dataclass(frozen=True, slots=True)
class RejectCommand(Action):
    """An agent command was refused; tell the agent (a tone) and log why."""

    verb: str
    reason: str


@dataclass(frozen=True, slots=True)
class Continue(Action):
    """The dialogue is over: hand the call back to the dialplan (it goes on to an agent)."""
