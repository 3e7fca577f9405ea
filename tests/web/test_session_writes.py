"""A request reads its session or API token without writing: the idle expiry slides, and a
token's last use is kept, at most every 15 s / 60 s (a write transaction per request cost more
than the calls query itself, bench/web.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from conftest import World

from recorder.store.models import ApiToken, WebSession


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
