"""Several ``callconsent web`` processes behind one proxy share one store: a share link's
ticket handed out by one is honoured by another, and failed logins from an address count
across all of them. Two app instances, each with its own engine on the one database, stand
for two processes."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from conftest import ON_BOTH_STORES, PASSWORD, World
from httpx2 import Response
from starlette.testclient import TestClient

from recorder.store.db import Database
from recorder.store.models import LoginFailure, ShareTicket
from web.app import build
from web.pages import PLAY_COOKIE

pytestmark = ON_BOTH_STORES  # every test here on SQLite and on PostgreSQL


def second_process(world: World) -> object:
    """Another web console on the same database (its own engine and connections)."""
    services = dataclasses.replace(world.services, db=Database(world.services.db.url))
    return build(services)


def client(app: object) -> TestClient:
    return TestClient(app, base_url="https://testserver", follow_redirects=False)


def login(c: TestClient, name: str, password: str) -> Response:
    page = c.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    form = {"login_token": token, "name": name, "password": password, "next": "/calls"}
    return c.post("/login", data=form)


def test_a_share_links_ticket_from_one_process_plays_on_another(world: World) -> None:
    rid = world.recordings["alice"]
    _, token = world.services.links.create(rid, user_id=1, actor="sam", hours=2, max_plays=None)
    _, other = world.services.links.create(rid, user_id=1, actor="sam", hours=2, max_plays=None)
    on_a, on_b = client(world.app), client(second_process(world))
    assert on_a.get(f"/s/{token}").status_code == 200
    ticket = on_a.cookies.get(PLAY_COOKIE)
    assert ticket
    with world.services.db.read() as s:
        stored = s.scalars(sa.select(ShareTicket)).one()
    assert ticket not in stored.ticket_hash  # kept as its hash
    on_b.cookies.set(PLAY_COOKIE, ticket)
    audio = on_b.get(f"/s/{token}/audio", headers={"Range": "bytes=0-99"})
    assert audio.status_code == 206 and audio.content == world.wavs[rid][:100]
    assert on_b.get(f"/s/{other}/audio").status_code == 403  # another link's ticket
    forged = client(second_process(world))
    forged.cookies.set(PLAY_COOKIE, ticket[:-2] + "xx")
    assert forged.get(f"/s/{token}/audio").status_code == 403
    with world.services.db.write() as s:
        s.execute(sa.update(ShareTicket).values(expires_at=datetime.now(UTC)))
    assert on_b.get(f"/s/{token}/audio").status_code == 403  # expired
    assert on_a.get(f"/s/{other}").status_code == 200  # a new play drops expired tickets
    with world.services.db.read() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ShareTicket)) == 1


def test_failed_logins_from_an_address_count_across_processes(world: World) -> None:
    world.services.settings = dataclasses.replace(
        world.services.settings, address_max_failures=3, lockout_minutes=15
    )
    app_b = second_process(world)
    on_a, on_b = client(world.app), client(app_b)
    for c, name in ((on_a, "nobody"), (on_b, "x"), (on_a, "y")):
        assert login(c, name, "whatever pass").status_code == 401
    # the right password, on the process that saw only one of the three failures
    refused = login(on_b, "sam", PASSWORD)
    assert refused.status_code == 401 and "your address" in refused.text
    with world.services.db.write() as s:  # the failures age out of the window
        s.execute(sa.update(LoginFailure).values(at=datetime.now(UTC) - timedelta(minutes=16)))
    assert login(on_b, "sam", PASSWORD).status_code == 303
    assert login(on_a, "z", "whatever pass").status_code == 401
    with world.services.db.read() as s:  # the aged ones were dropped when the next was kept
        assert s.scalar(sa.select(sa.func.count()).select_from(LoginFailure)) == 1
