"""Recording policies, per campaign or queue, validated once when the config is loaded.

A policy says whether and how a call may be recorded. It is data (TOML), turned into a frozen
:class:`Policy` here; every error names the setting (``policies.sales.mode``) and says what
would be accepted.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from consent_ivr.errors import PolicyError
from consent_ivr.events import DTMF_DIGITS


class Mode(enum.StrEnum):
    CONSENT = "consent"  # ask the caller (or announce, for a non-consent legal basis)
    ALWAYS = "always"  # record every call (needs a non-consent legal basis)
    NEVER = "never"  # never record
    ON_DEMAND = "on_demand"  # record only when an agent starts it (feature code / CLI)


class LegalBasis(enum.StrEnum):
    """GDPR Art. 6(1) bases that make sense for call recording."""

    CONSENT = "consent"  # (a): ask, and record only after the accept digit
    CONTRACT = "contract"  # (b): announce, then record
    LEGAL_OBLIGATION = "legal_obligation"  # (c): e.g. MiFID II; announce, then record
    LEGITIMATE_INTEREST = "legitimate_interest"  # (f): announce; the caller may object (Art. 21)


class RecordFrom(enum.StrEnum):
    CONSENT = "consent"  # start as soon as recording is allowed
    AGENT_ANSWER = "agent_answer"  # start when an agent answers: queue waiting time stays out


class OnWithdrawal(enum.StrEnum):
    STOP = "stop"  # keep what was recorded while consent held (Art. 7(3)), record no more
    STOP_AND_DISCARD = "stop_and_discard"  # also destroy what was recorded


class SilenceOutcome(enum.StrEnum):
    DECLINE = "decline"  # no answer: the call goes on unrecorded (status no_input)
    ACCEPT = "accept"  # only for an objection window under legitimate interest


PROMPT_IDS = ("consent", "notice", "thanks", "declined", "no_input")
_CAMPAIGN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class Policy:
    """How calls of one campaign or queue are treated. Defaults are the cautious choice."""

    name: str = "default"
    mode: Mode = Mode.CONSENT
    legal_basis: LegalBasis = LegalBasis.CONSENT
    accept_digit: str = "1"
    decline_digit: str = "2"
    max_attempts: int = 2
    digit_timeout_ms: int = 5000
    silence_outcome: SilenceOutcome = SilenceOutcome.DECLINE
    record_from: RecordFrom = RecordFrom.CONSENT
    on_withdrawal: OnWithdrawal = OnWithdrawal.STOP_AND_DISCARD
    withdraw_digit: str | None = None  # a key the caller presses mid-call; off by default
    monitoring_allowed: bool = False
    retention_category: str = "default"
    language: str = "en"  # fallback when the channel's language has no prompts
    stereo: bool = False  # customer and agent on separate channels
    announce: bool = True  # play the notice for a non-consent legal basis
    whisper: bool = False  # tell the agent the consent status when bridged
    beep_interval_s: int = 0  # periodic beep while recording; 0 = off

    def __post_init__(self) -> None:
        for name, choices in _ENUMS.items():  # Policy(mode="never") works as the TOML does
            value = getattr(self, name)
            if not isinstance(value, choices):
                object.__setattr__(self, name, _coerce(name, name, value))
        _validate(self)

    @property
    def asks_consent(self) -> bool:
        """True when the caller is asked and only the accept digit allows recording."""
        return self.mode is Mode.CONSENT and self.legal_basis is LegalBasis.CONSENT

    @property
    def allows_objection(self) -> bool:
        """Under legitimate interest the caller may object during the notice (Art. 21)."""
        return self.legal_basis is LegalBasis.LEGITIMATE_INTEREST

    def snapshot(self) -> dict[str, Any]:
        """The policy as plain data, kept with each consent decision as evidence. Built once
        per policy (``asdict`` deep-copies every field: 25 µs a decision); each caller gets
        its own dict."""
        return dict(_plain(self))

    def resolve_language(self, channel_language: str | None, available: Iterable[str]) -> str:
        """The prompt language for a channel: its own if we have prompts for it (``de_DE``
        matches ``de``), else the policy's fallback language."""
        have = {a.lower().replace("-", "_") for a in available}
        if channel_language:
            lang = channel_language.lower().replace("-", "_")
            if lang in have:
                return lang
            base = lang.split("_", 1)[0]
            if base in have:
                return base
        return self.language

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any], where: str = "") -> Policy:
        """Build a policy from config data; errors name ``<where>.<key>``."""
        prefix = where or f"policies.{name}"
        known = {f.name for f in fields(cls)} - {"name"}
        for key in data:
            if key not in known:
                raise PolicyError(
                    f"{prefix}.{key}", f"unknown setting; known: {', '.join(sorted(known))}"
                )
        kwargs: dict[str, Any] = {"name": name}
        for f in fields(cls):
            if f.name == "name" or f.name not in data:
                continue
            kwargs[f.name] = _coerce(f"{prefix}.{f.name}", f.name, data[f.name])
        if (
            "silence_outcome" not in data
            and kwargs.get("legal_basis") is LegalBasis.LEGITIMATE_INTEREST
        ):
            kwargs["silence_outcome"] = SilenceOutcome.ACCEPT  # no objection heard
        try:
            return cls(**kwargs)
        except PolicyError as exc:
            raise PolicyError(f"{prefix}.{exc.key}", exc.message) from None


_ENUMS: dict[str, type[enum.StrEnum]] = {
    "mode": Mode,
    "legal_basis": LegalBasis,
    "silence_outcome": SilenceOutcome,
    "record_from": RecordFrom,
    "on_withdrawal": OnWithdrawal,
}
_BOOLS = {"monitoring_allowed", "stereo", "announce", "whisper"}
_INTS = {"max_attempts": (1, 5), "digit_timeout_ms": (1000, 30000), "beep_interval_s": (0, 3600)}


def _coerce(key: str, name: str, value: Any) -> Any:
    if name in _ENUMS:
        choices = _ENUMS[name]
        try:
            return choices(value)
        except ValueError:
            allowed = ", ".join(c.value for c in choices)
            raise PolicyError(key, f"expected one of {allowed}; got {value!r}") from None
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise PolicyError(key, f"expected true or false; got {value!r}")
        return value
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(key, f"expected an integer; got {value!r}")
        return value
    if name == "withdraw_digit" and value in ("", False):
        return None
    if not isinstance(value, str):
        raise PolicyError(key, f"expected a string; got {value!r}")
    return value


def _validate(p: Policy) -> None:
    if not _CAMPAIGN_RE.match(p.name):
        raise PolicyError(
            "name", f"campaign names are letters, digits, '_', '.', '-' (got {p.name!r})"
        )
    for key in ("accept_digit", "decline_digit"):
        if getattr(p, key) not in DTMF_DIGITS:
            raise PolicyError(
                key, f"expected one DTMF key (0-9, *, #, A-D); got {getattr(p, key)!r}"
            )
    if p.accept_digit == p.decline_digit:
        raise PolicyError("decline_digit", "must differ from accept_digit")
    if p.withdraw_digit is not None and p.withdraw_digit not in DTMF_DIGITS:
        raise PolicyError(
            "withdraw_digit", f"expected one DTMF key or nothing; got {p.withdraw_digit!r}"
        )
    for key, (lo, hi) in _INTS.items():
        value = getattr(p, key)
        if not lo <= value <= hi:
            raise PolicyError(key, f"expected {lo}..{hi}; got {value}")
    if not _LANGUAGE_RE.match(p.language):
        raise PolicyError(
            "language", f"expected a language code such as en or de_CH; got {p.language!r}"
        )
    if not _CATEGORY_RE.match(p.retention_category):
        raise PolicyError(
            "retention_category", f"expected a lower-case name; got {p.retention_category!r}"
        )
    if p.mode is Mode.ALWAYS and p.legal_basis is LegalBasis.CONSENT:
        raise PolicyError(
            "mode",
            "'always' records without asking, but legal_basis is 'consent': use mode = 'consent' "
            "or name the legal basis that covers recording every call",
        )
    if p.silence_outcome is SilenceOutcome.ACCEPT and p.legal_basis is LegalBasis.CONSENT:
        raise PolicyError(
            "silence_outcome",
            "silence is not consent (GDPR Art. 4(11), Recital 32): with legal_basis = 'consent' "
            "only 'decline' is allowed",
        )


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """All policies, looked up by campaign; an unknown campaign gets the default policy."""

    default: Policy = field(default_factory=Policy)
    campaigns: Mapping[str, Policy] = field(default_factory=dict)

    def for_campaign(self, campaign: str | None) -> Policy:
        if campaign and campaign in self.campaigns:
            return self.campaigns[campaign]
        return self.default

    def knows(self, campaign: str) -> bool:
        return campaign in self.campaigns

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "policies") -> PolicyBook:
        """``data`` is the ``[policies]`` table: ``default`` plus one sub-table per campaign.
        Campaign tables inherit every setting they do not name from ``default``."""
        base = data.get("default", {})
        if not isinstance(base, Mapping):
            raise PolicyError(f"{where}.default", "expected a table")
        default = Policy.from_mapping("default", base, f"{where}.default")
        campaigns: dict[str, Policy] = {}
        for name, table in data.items():
            if name == "default":
                continue
            if not isinstance(table, Mapping):
                raise PolicyError(f"{where}.{name}", "expected a table of policy settings")
            if not _CAMPAIGN_RE.match(name):
                raise PolicyError(
                    f"{where}.{name}", "campaign names are letters, digits, '_', '.', '-'"
                )
            campaigns[name] = Policy.from_mapping(name, {**base, **table}, f"{where}.{name}")
        return cls(default=default, campaigns=campaigns)


@functools.lru_cache(maxsize=256)  # a policy is frozen; a config holds a handful
def _plain(policy: Policy) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(policy).items()}
