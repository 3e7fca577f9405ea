"""A request reads its session or API token without writing: the idle expiry slides, and a
token's last use is kept, at most every 15 s / 60 s (a write transaction per request cost more
than the calls query itself, bench/web.py)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ON_BOTH_STORES, World
from starlette.testclient import TestClient

from recorder.store.models import ApiToken, WebSession
from web.auth import Sessions


@contextmanager
def commits(world: World) -> Iterator[list[object]]:
    """The store's commits while the block runs."""
    seen: list[object] = []
    engine = world.services.db.engine

    def count(connection: object) -> None:
        seen.append(connection)

    sa.event.listen(engine, "commit", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "commit", count)


def _session(world: World) -> WebSession:
    with world.services.db.read() as s:
        return s.scalars(sa.select(WebSession)).one()


@ON_BOTH_STORES
def test_the_idle_expiry_slides_only_when_the_session_was_seen_15_s_ago(world: World) -> None:
    c = world.client("supervisor")
    assert c.get("/calls").status_code == 200
    first = _session(world)
    with commits(world) as seen:
        assert c.get("/calls").status_code == 200
    assert seen == []  # a fresh session is only read
    assert _session(world).last_seen_at == first.last_seen_at
    earlier = datetime.now(UTC) - timedelta(seconds=20)
    with world.services.db.write() as s:
        s.execute(
            sa.update(WebSession).values(
                last_seen_at=earlier, idle_expires_at=earlier + timedelta(minutes=30)
            )
        )
    assert c.get("/calls").status_code == 200
    seen = _session(world)
    assert seen.last_seen_at > earlier + timedelta(seconds=15)
    assert seen.idle_expires_at > datetime.now(UTC) + timedelta(minutes=29)


@ON_BOTH_STORES
def test_a_tokens_last_use_is_kept_at_most_once_a_minute(world: World) -> None:
    _, raw = world.services.accounts.create_token("sam", "crm", 30, actor="adam")
    c = world.client()
    bearer = {"Authorization": f"Bearer {raw}"}

    def last_used() -> datetime | None:
        with world.services.db.read() as s:
            return s.scalars(sa.select(ApiToken.last_used_at)).one()

    assert last_used() is None
    assert c.get("/api/v1/me", headers=bearer).status_code == 200
    first = last_used()
    assert first is not None
    with commits(world) as seen:
        assert c.get("/api/v1/me", headers=bearer).status_code == 200
    assert seen == [] and last_used() == first
    with world.services.db.write() as s:
        s.execute(sa.update(ApiToken).values(last_used_at=first - timedelta(seconds=61)))
    assert c.get("/api/v1/me", headers=bearer).status_code == 200
    latest = last_used()
    assert latest is not None and latest >= first


@contextmanager
def statements(world: World) -> Iterator[list[str]]:
    """Every SQL statement SQLite runs while the block runs, as its trace sees them: those on
    the DB-API cursor too (``Database.reading``), which SQLAlchemy's events never see, and
    the ``BEGIN`` and ``ROLLBACK`` of a ``Connection``."""
    seen: list[str] = []
    engine = world.services.db.engine

    def trace(dbapi_conn: Any, *_: object) -> None:
        dbapi_conn.set_trace_callback(seen.append)

    def untrace(dbapi_conn: Any, *_: object) -> None:
        dbapi_conn.set_trace_callback(None)

    sa.event.listen(engine, "checkout", trace)
    sa.event.listen(engine, "checkin", untrace)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "checkout", trace)
        sa.event.remove(engine, "checkin", untrace)


def test_a_session_or_token_is_read_with_one_statement(world: World) -> None:
    """Who asks costs one statement per request (the session or token joined with its user,
    on the DB-API cursor, with no BEGIN and ROLLBACK around it): it runs before every page,
    and through SQLAlchemy's ``Connection`` it was a seventh of the calls page (bench/web.py)."""
    c = world.client("supervisor")
    _, raw = world.services.accounts.create_token("sam", "crm", 30, actor="adam")
    bearer = {"Authorization": f"Bearer {raw}"}
    assert c.get("/api/v1/me").status_code == 200
    assert world.client().get("/api/v1/me", headers=bearer).status_code == 200  # last use kept
    with statements(world) as seen:
        assert c.get("/api/v1/me").json()["via"] == "session"
        assert world.client().get("/api/v1/me", headers=bearer).json()["via"] == "token"
    assert len(seen) == 2, seen


@ON_BOTH_STORES
def test_a_failed_slide_of_the_idle_expiry_is_one_log_line_not_a_failed_request(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write runs after the response (off the request's time); when the store refuses it
    the page was served all the same, and the next request tries again."""
    caplog.set_level(logging.INFO)
    c = world.client("supervisor")
    earlier = datetime.now(UTC) - timedelta(seconds=20)
    with world.services.db.write() as s:
        s.execute(
            sa.update(WebSession).values(
                last_seen_at=earlier, idle_expires_at=earlier + timedelta(minutes=30)
            )
        )

    def locked(self: Sessions, digest: str) -> None:
        raise sa.exc.OperationalError("UPDATE web_sessions", {}, Exception("database is locked"))

    with monkeypatch.context() as m:
        m.setattr(Sessions, "_slide", locked)
        assert c.get("/calls").status_code == 200
    assert _session(world).last_seen_at == earlier
    failed = [r for r in caplog.records if r.getMessage() == "web_touch_failed"]
    assert len(failed) == 1 and failed[0].kv == {  # type: ignore[attr-defined]
        "via": "session",
        "error": "OperationalError",
    }
    assert c.get("/calls").status_code == 200
    assert _session(world).last_seen_at > earlier + timedelta(seconds=15)


def test_the_objects_made_at_start_are_kept_out_of_full_collections(world: World) -> None:
    """A full collection walked every object the process made at start (~100,000: modules,
    the engine, phone number metadata) and stalled a request 50-120 ms (bench/web.py)."""
    gc.unfreeze()
    try:
        with TestClient(world.app):  # runs the app's lifespan, as uvicorn does at start
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
