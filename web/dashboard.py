"""The dashboard's numbers: consent outcomes per campaign per day, recordings by state,
storage used, the next purge and the key-epoch runway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, func, select

from recorder.store.models import Call, Recording
from web.services import Services

DAYS = 30
OUTCOMES = ("granted", "declined", "no_input", "withdrawn", "not_required")


def collect(services: Services) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=DAYS)
    day = func.substr(func.cast(Call.started_at, String()), 1, 10)
    with services.db.read() as s:
        outcome_rows = s.execute(
            select(Call.campaign, day, Call.consent_status, func.count())
            .where(Call.started_at >= since)
            .group_by(Call.campaign, day, Call.consent_status)
        ).all()
        states = dict(
            s.execute(select(Recording.state, func.count()).group_by(Recording.state)).all()
        )
        stored = s.scalar(
            select(func.coalesce(func.sum(Recording.ciphertext_size), 0)).where(
                Recording.state == "encrypted"
            )
        )
        next_purge = s.scalar(
            select(func.min(Recording.expires_at)).where(
                Recording.state == "encrypted", Recording.legal_hold.is_(False)
            )
        )
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    for campaign, d, status, n in outcome_rows:
        if status in OUTCOMES:
            outcomes.setdefault(campaign, {}).setdefault(str(d), {})[status] = n
    facts = {name: _safe(fn) for name, fn in services.facts.items()}
    return {
        "outcomes": outcomes,
        "outcome_names": list(OUTCOMES),
        "states": states,
        "stored_bytes": int(stored or 0),
        "next_purge": next_purge.isoformat() if next_purge else None,
        **facts,
    }


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # a fact that cannot be computed is shown as such
        return f"unavailable ({type(exc).__name__})"
