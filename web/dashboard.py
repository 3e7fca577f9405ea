"""The dashboard's numbers: consent outcomes per campaign per day, recordings by state,
storage used, the next purge and the key-epoch runway.

What grows with every call is kept (:mod:`web.kept`): the outcomes of the 29 days before
today, the recordings in their end states and the storage they use are counted by a pass in
the background at most every :data:`TOTALS_MAX_AGE_S` and on a new UTC day. At every load, by
short ranges of an index: today's outcomes (those since the kept pass's day), the recordings
in progress or waiting for the finalizer, and the next purge."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, String, func, select
from sqlalchemy.orm import Session

from recorder.store.db import Database
from recorder.store.models import (
    END_STATES,
    WORKING_STATES,
    Call,
    Recording,
    RecordingState,
    recordings_by_state,
)
from web.kept import Kept

DAYS = 30  # today and the 29 UTC days before it
OUTCOMES = ("granted", "declined", "no_input", "withdrawn", "not_required")
TOTALS_MAX_AGE_S = 300.0
WAIT_S = 1.0  # a page waits at most this long for a pass; then it shows the one before


@dataclass(frozen=True)
class Totals:
    """What a pass counted. ``outcomes`` are the calls started before ``until`` (the start of
    the UTC day the pass ran) within the window."""

    until: datetime
    outcomes: list[tuple[str, str, str, int]]  # campaign, day, consent status, calls
    ends: dict[str, int]  # recordings by end state
    stored_bytes: int


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _outcomes(
    s: Session, since: datetime, until: datetime | None = None
) -> Sequence[Row[tuple[str, str, str, int]]]:
    day: ColumnElement[str]
    if s.get_bind().dialect.name == "postgresql":
        # the UTC day: a timestamptz cast to text is in the session's time zone, the server's
        # default (Debian's initdb takes the host's), and the window is cut at UTC midnight
        day = func.to_char(func.timezone("UTC", Call.started_at), "YYYY-MM-DD")
    else:  # SQLite keeps UTC as text
        day = func.substr(func.cast(Call.started_at, String()), 1, 10)
    query = select(Call.campaign, day, Call.consent_status, func.count()).where(
        Call.started_at >= since
    )
    if until is not None:
        query = query.where(Call.started_at < until)
    return s.execute(query.group_by(Call.campaign, day, Call.consent_status)).all()


def _next_purge(s: Session) -> datetime | None:
    return s.scalar(
        select(func.min(Recording.expires_at)).where(
            Recording.state == RecordingState.ENCRYPTED, Recording.legal_hold.is_(False)
        )
    )


def totals(db: Database, today: date) -> Totals:
    """The kept part, counted now: the days before ``today`` in the window, the recordings in
    their end states and the storage they use."""
    until = _day_start(today)
    with db.read() as s:
        rows = _outcomes(s, until - timedelta(days=DAYS - 1), until)
        ends = recordings_by_state(s, END_STATES)
        stored = s.scalar(
            select(func.coalesce(func.sum(Recording.ciphertext_size), 0)).where(
                Recording.state == RecordingState.ENCRYPTED
            )
        )
    return Totals(until, [(c, str(d), st, n) for c, d, st, n in rows], ends, int(stored or 0))


def counter(db: Database) -> Kept[Totals]:
    def count(today: Hashable) -> Totals:
        assert isinstance(today, date)
        return totals(db, today)

    return Kept("dashboard", count, max_age_s=TOTALS_MAX_AGE_S, wait_s=WAIT_S)


def live(
    s: Session, since: datetime
) -> tuple[Sequence[Row[tuple[str, str, str, int]]], dict[str, int], datetime | None]:
    """What a load reads itself, by short ranges of indexes: the outcomes since ``since``,
    the recordings in the working states, the next purge."""
    return _outcomes(s, since), recordings_by_state(s, WORKING_STATES), _next_purge(s)


def collect(
    db: Database, counted: Kept[Totals], facts: Mapping[str, Callable[[], Any]]
) -> dict[str, Any]:
    """The page's numbers: ``counted`` is the kept part (``counter(db)``), ``facts`` the
    CLI's (the key-epoch runway)."""
    today = datetime.now(UTC).date()
    snap = counted.get(today)
    kept = snap.result.value if snap.result is not None else None
    with db.read() as s:
        # since the kept pass's day: today, and yesterday too until a pass ran today
        latest, working, next_purge = live(s, kept.until if kept else _day_start(today))
    first_day = (today - timedelta(days=DAYS - 1)).isoformat()
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    for campaign, d, status, n in [*(kept.outcomes if kept else ()), *latest]:
        if status in OUTCOMES and str(d) >= first_day:
            counts = outcomes.setdefault(campaign, {}).setdefault(str(d), {})
            counts[status] = counts.get(status, 0) + n
    shown_facts = {name: _safe(fn) for name, fn in facts.items()}
    return {
        "outcomes": outcomes,
        "outcome_names": list(OUTCOMES),
        "states": {**working, **(kept.ends if kept else {})},
        "stored_bytes": kept.stored_bytes if kept else None,
        "next_purge": next_purge.isoformat() if next_purge else None,
        # the kept part: when its pass started, whether a newer one is running, why one failed
        "totals_as_of": snap.result.started.isoformat(timespec="seconds") if kept else None,
        "totals_running": snap.running_since is not None,
        "totals_error": snap.error,
        **shown_facts,
    }


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # a fact that cannot be computed is shown as such
        return f"unavailable ({type(exc).__name__})"
