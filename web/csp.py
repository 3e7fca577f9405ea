"""The Content-Security-Policy every response carries (``web.app.SecurityHeaders``)."""

from __future__ import annotations


def content_security_policy(style_nonce: str | None = None) -> str:
    """No inline script anywhere; a page may allow its own ``<style nonce>`` (wavesurfer's
    shadow DOM)."""
    style = f"'self' 'nonce-{style_nonce}'" if style_nonce else "'self'"
    return (
        f"default-src 'none'; script-src 'self'; style-src {style}; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
