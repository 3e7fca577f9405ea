"""Named errors of the consent core.

Raised where the cause is known, and worded so that the reader knows what to do.
"""

from __future__ import annotations


class ConsentError(Exception):
    """Base class of every error raised by :mod:`consent_ivr`."""


class IllegalTransition(ConsentError):
    """An event arrived that the machine cannot accept in its current phase.

    This is a bug in the adapter that fed the event (or a PBX that behaved in a way the
    adapter did not expect): the machine's state is left exactly as it was.
    """

    def __init__(self, phase: object, event: object, why: str = "") -> None:
        self.phase = phase
        self.event = event
        detail = f": {why}" if why else ""
        super().__init__(f"{type(event).__name__} is not allowed in phase {phase}{detail}")


class PolicyError(ConsentError, ValueError):
    """A recording policy is invalid. ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")
