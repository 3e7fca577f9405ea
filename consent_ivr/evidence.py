"""What the machine knows about a consent decision, in a form the store can keep as proof.

The adapter adds what only it knows (PBX call ids, the SHA-256 of each prompt file) when it
persists the evidence; the machine records what the caller heard and pressed, and when.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class DialogueLog:
    """What happened in the dialogue so far: the raw material of the evidence. It records; the
    rules (what a digit means, when to decide) stay in ``machine.py``."""

    clock: Callable[[], datetime]
    language: str
    attempts: int = 0
    question: str | None = None
    digits: list[DigitPress] = field(default_factory=list)
    prompts: list[PromptPlay] = field(default_factory=list)

    def played(self, prompt_id: str) -> None:
        self.prompts.append(PromptPlay(prompt_id, self.language, self.clock()))

    def prompt_ended(self, outcome: Literal["finished", "interrupted", "failed", "hangup"]) -> None:
        if self.prompts and self.prompts[-1].outcome == "playing":
            last = self.prompts[-1]
            self.prompts[-1] = PromptPlay(last.prompt_id, last.language, last.at, outcome)

    def pressed(self, digit: str, valid: bool) -> None:
        self.digits.append(DigitPress(digit, self.clock(), max(self.attempts, 1), valid))

    def evidence(
        self,
        consent_id: str,
        status: ConsentStatus,
        method: DecisionMethod,
        legal_basis: str,
        mode: str,
        policy: Mapping[str, Any],
    ) -> ConsentEvidence:
        return ConsentEvidence(
            consent_id=consent_id,
            decision=status,
            method=method,
            legal_basis=legal_basis,
            mode=mode,
            question_prompt=self.question,
            language=self.language,
            digits=tuple(self.digits),
            prompts=tuple(self.prompts),
            attempts=self.attempts,
            decided_at=self.clock(),
            policy=policy,
        )
