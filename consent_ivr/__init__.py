"""The consent rules, as a pure state machine (sans-I/O, standard library only).

Adapters for Asterisk (:mod:`agi`) and FreeSWITCH (:mod:`esl_listener`) feed events to a
:class:`ConsentCall` and perform the actions it returns. See ``consent_ivr/machine.py`` for the
transition table and the rules it guarantees.
"""

from consent_ivr.actions import (
    Action,
    AllowMonitoring,
    CollectDigit,
    Continue,
    DiscardRecording,
    LogConsent,
    LogStatusChange,
    PauseRecording,
    PlayPrompt,
    RejectCommand,
    ResumeRecording,
    SetVariables,
    StartRecording,
    StopMonitoring,
    StopRecording,
)
from consent_ivr.errors import ConsentError, IllegalTransition, PolicyError
from consent_ivr.events import (
    AgentAnswered,
    AgentCommand,
    CallAnswered,
    CallerWithdrew,
    DigitReceived,
    Event,
    HungUp,
    InputTimedOut,
    PromptFailed,
    PromptFinished,
    RecordingStarted,
    RecordingStopped,
)
from consent_ivr.evidence import ConsentEvidence, DigitPress, PromptPlay
from consent_ivr.machine import CallSnapshot, ConsentCall, Phase, RecordingState
from consent_ivr.policy import (
    LegalBasis,
    Mode,
    OnWithdrawal,
    Policy,
    PolicyBook,
    RecordFrom,
    SilenceOutcome,
)
from consent_ivr.status import ConsentStatus

__all__ = [
    "Action",
    "AgentAnswered",
    "AgentCommand",
    "AllowMonitoring",
    "CallAnswered",
    "CallSnapshot",
    "CallerWithdrew",
    "CollectDigit",
    "ConsentCall",
    "ConsentError",
    "ConsentEvidence",
    "ConsentStatus",
    "Continue",
    "DigitPress",
    "DigitReceived",
    "DiscardRecording",
    "Event",
    "HungUp",
    "IllegalTransition",
    "InputTimedOut",
    "LegalBasis",
    "LogConsent",
    "LogStatusChange",
    "Mode",
    "OnWithdrawal",
    "PauseRecording",
    "Phase",
    "PlayPrompt",
    "Policy",
    "PolicyBook",
    "PolicyError",
    "PromptFailed",
    "PromptFinished",
    "PromptPlay",
    "RecordFrom",
    "RecordingStarted",
    "RecordingState",
    "RecordingStopped",
    "RejectCommand",
    "ResumeRecording",
    "SetVariables",
    "SilenceOutcome",
    "StartRecording",
    "StopMonitoring",
    "StopRecording",
]
