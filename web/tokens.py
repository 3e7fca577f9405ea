"""Random bearer secrets (session ids, API tokens, share-link tokens): 256 bits from the OS,
handed out once, kept only as their SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32  # 256 bits: far above the 128 the issue asks of share links


def new_token() -> tuple[str, str]:
    """(the token to hand out, the hash to store)."""
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    return raw, token_hash(raw)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets (CSRF tokens)."""
    return hmac.compare_digest(a.encode(), b.encode())
