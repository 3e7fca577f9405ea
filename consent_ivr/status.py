"""The one consent-status vocabulary both PBXs use.

Asterisk sets it on the customer leg as ``CONSENT_STATUS`` (inherited by the agent leg as
``__CONSENT_STATUS``); FreeSWITCH exports it as ``consent_status``.
"""

from __future__ import annotations

import enum


class ConsentStatus(enum.StrEnum):
    GRANTED = "granted"  # the caller pressed the accept digit (or an agent attested it)
    DECLINED = "declined"  # the caller pressed the decline digit, objected, or told the agent no
    NO_INPUT = "no_input"  # the caller never answered: silence is not consent
    WITHDRAWN = "withdrawn"  # consent was given, then taken back during the call
    NOT_REQUIRED = "not_required"  # the policy does not ask (other legal basis, or never records)
    UNAVAILABLE = "unavailable"  # our service could not ask: the call goes on, unrecorded


#: Statuses under which audio may be kept. ``NOT_REQUIRED`` only where the policy records.
RECORDABLE = frozenset({ConsentStatus.GRANTED, ConsentStatus.NOT_REQUIRED})
