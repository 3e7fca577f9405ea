"""Phone numbers: normalised to E.164, and never stored in clear.

A number is kept as a keyed hash (HMAC-SHA256) for lookup by data-subject requests, plus an
AES-GCM encrypted copy for display to authorised users. Both keys derive from one secret in
the key directory. Withheld and anonymous numbers get no lookup key and nothing is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import phonenumbers
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recorder.store.models import NumberKind

SECRET_NAME = "numbers.secret"  # noqa: S105 - a file name, not a secret
_ENC_VERSION = b"\x01"
_AAD = b"callconsent phone number v1"
# What PBXs and trunks put in the caller-id number when there is none to show.
WITHHELD = frozenset(
    {
        "",
        "anonymous",
        "unknown",
        "restricted",
        "private",
        "withheld",
        "unavailable",
        "<unknown>",
        "0000000000",
        "asterisk",
    }
)


class NotAPhoneNumber(ValueError):
    """The text could not be read as a phone number in any common notation."""


@dataclass(frozen=True, slots=True)
class ProtectedNumber:
    kind: NumberKind
    key: str | None  # HMAC hex, for lookup
    enc: bytes | None  # encrypted copy

    @classmethod
    def none(cls) -> ProtectedNumber:
        return cls(NumberKind.NONE, None, None)


class NumberProtector:
    def __init__(self, secret: bytes, default_region: str = "DE") -> None:
        if len(secret) < 32:
            raise ValueError("the number secret must be at least 32 bytes")
        self.default_region = default_region.upper()
        self._mac_key = _derive(secret, b"callconsent number lookup v1")
        self._aead = AESGCM(_derive(secret, b"callconsent number encryption v1"))

    def normalise(self, raw: str) -> str:
        """Any common notation (``0151 1234567``, ``+49 (151) 123-45-67``, ``0049…``) to
        E.164, read in the default region unless it says otherwise."""
        text = raw.strip()
        if text.startswith("00"):
            text = "+" + text[2:]
        try:
            parsed = phonenumbers.parse(text, self.default_region)
        except phonenumbers.NumberParseException as exc:
            raise NotAPhoneNumber(f"not a phone number: {exc}") from None
        if not phonenumbers.is_possible_number(parsed):
            raise NotAPhoneNumber("not a possible phone number for its region")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    def lookup_key(self, raw: str) -> str:
        """The keyed hash a number is found by; raises :class:`NotAPhoneNumber`."""
        e164 = self.normalise(raw)
        return hmac.new(self._mac_key, e164.encode(), hashlib.sha256).hexdigest()

    def protect(self, raw: str | None, *, withheld: bool = False) -> ProtectedNumber:
        if raw is None:
            return ProtectedNumber.none()
        if withheld or raw.strip().lower() in WITHHELD:
            return ProtectedNumber(NumberKind.WITHHELD, None, None)
        try:
            e164 = self.normalise(raw)
        except NotAPhoneNumber:
            return ProtectedNumber(NumberKind.UNPARSED, None, self._encrypt(raw.strip()[:64]))
        key = hmac.new(self._mac_key, e164.encode(), hashlib.sha256).hexdigest()
        return ProtectedNumber(NumberKind.E164, key, self._encrypt(e164))

    def reveal(self, enc: bytes) -> str:
        if enc[:1] != _ENC_VERSION:
            raise ValueError("unknown number encryption version")
        return self._aead.decrypt(enc[1:13], enc[13:], _AAD).decode()

    def _encrypt(self, value: str) -> bytes:
        nonce = os.urandom(12)
        return _ENC_VERSION + nonce + self._aead.encrypt(nonce, value.encode(), _AAD)


def mask(raw: str | None) -> str:
    """For logs: keep the last two digits only (``+49151…67`` → ``…67``)."""
    if not raw:
        return "-"
    digits = [ch for ch in raw if ch.isdigit()]
    return "…" + "".join(digits[-2:]) if len(digits) > 2 else "…"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
