"""The limit of bench/web.py's page figures: the statements the calls page runs (the calls,
filtered, newest first, one more than a page; then the recording counts of those calls), built
here independently and run directly through SQLAlchemy on the same store, and their plans."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from callconsent import config as config_mod
from recorder.store.db import Database
from recorder.store.models import Call, Recording


def statement(params: dict[str, str], limit: int) -> Select[Any]:
    q = select(Call)
    if params.get("since"):
        q = q.where(
            Call.started_at >= datetime.combine(date.fromisoformat(params["since"]), time(), UTC)
        )
    if params.get("until"):
        end = date.fromisoformat(params["until"]) + timedelta(days=1)
        q = q.where(Call.started_at < datetime.combine(end, time(), UTC))
    for column, name in (
        (Call.campaign, "campaign"),
        (Call.direction, "direction"),
        (Call.consent_status, "consent"),
        (Call.agent, "agent"),
        (Call.number_key, "nk"),
    ):
        if params.get(name):
            q = q.where(column == params[name])
    if params.get("after"):
        at, cid = base64.urlsafe_b64decode(params["after"].encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(at)
        q = q.where(or_(Call.started_at < moment, and_(Call.started_at == moment, Call.id < cid)))
    return q.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit + 1)


class DirectQuery:
    def __init__(self, config_path: str, limit: int) -> None:
        cfg = config_mod.load(config_path)
        self.db = Database(cfg.database_url)
        self.limit = limit

    def run(self, params: dict[str, str]) -> int:
        """The page's two statements; the number of calls found (at most limit + 1)."""
        with self.db.read() as s:
            calls = list(s.scalars(statement(params, self.limit)))
            ids = [c.id for c in calls[: self.limit]]
            if ids:
                counts = select(Recording.call_id, func.count()).where(Recording.call_id.in_(ids))
                dict(s.execute(counts.group_by(Recording.call_id)).all())
        return len(calls)

    def plan(self, params: dict[str, str]) -> str:
        """SQLite's EXPLAIN QUERY PLAN of the calls statement, with its parameters bound."""
        seen: list[str] = []
        with self.db.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            raw.set_trace_callback(seen.append)  # the statement as SQLite expands it
            try:
                conn.execute(statement(params, self.limit)).fetchall()
            finally:
                raw.set_trace_callback(None)
            sql = next(s for s in seen if s.lstrip().upper().startswith("SELECT"))
            steps = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).fetchall()
        return "; ".join(str(step[-1]) for step in steps)
