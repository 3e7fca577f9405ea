"""What the machine knows about a consent decision, in a form the store can keep as proof.

The adapter adds what only it knows (PBX call ids, the SHA-256 of each prompt file) when it
persists the evidence; the machine records what the caller heard and pressed, and when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from consent_ivr.status import ConsentStatus

#: How a decision came about.
#: ``prompt``: the caller answered (or not) the consent question;
#: ``notice``: a non-consent legal basis was announced (an objection is a decline);
#: ``policy``: the policy never asks (``always`` without notice, ``never``, ``on_demand``);
#: ``hangup``: the caller hung up before deciding;
#: ``prompt_failed``: the question could not be played, so nothing could be asked.
DecisionMethod = Literal["prompt", "notice", "policy", "hangup", "prompt_failed"]


@dataclass(frozen=True, slots=True)
class DigitPress:
    digit: str
    at: datetime
    attempt: int
    valid: bool


@dataclass(frozen=True, slots=True)
class PromptPlay:
    prompt_id: str
    language: str
    at: datetime
    outcome: Literal["finished", "interrupted", "failed", "hangup", "playing"] = "playing"


@dataclass(frozen=True, slots=True)
class ConsentEvidence:
    consent_id: str
    decision: ConsentStatus
    method: DecisionMethod
    legal_basis: str
    mode: str
    question_prompt: str | None
    language: str
    digits: tuple[DigitPress, ...]
    prompts: tuple[PromptPlay, ...]
    attempts: int
    decided_at: datetime
    policy: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (timestamps as ISO 8601 UTC)."""
        return {
            "consent_id": self.consent_id,
            "decision": self.decision.value,
            "method": self.method,
            "legal_basis": self.legal_basis,
            "mode": self.mode,
            "question_prompt": self.question_prompt,
            "language": self.language,
            "digits": [
                {"digit": d.digit, "at": d.at.isoformat(), "attempt": d.attempt, "valid": d.valid}
                for d in self.digits
            ],
            "prompts": [
                {
                    "prompt_id": p.prompt_id,
                    "language": p.language,
                    "at": p.at.isoformat(),
                    "outcome": p.outcome,
                }
                for p in self.prompts
            ],
            "attempts": self.attempts,
            "decided_at": self.decided_at.isoformat(),
            "policy": dict(self.policy),
        }
