"""Every route × every role (and anonymous, a revoked API token, an expired session) × the
status it must answer. The table states the roles itself (it does not read web.authz), and a
route added to the app without an entry here fails the first test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from unittest.mock import MagicMock

import httpx2 as httpx
import pyotp
import pytest
import sqlalchemy as sa
from conftest import NUMBER, ON_BOTH_STORES, PASSWORD, ROLE_USERS, World, add_call
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from recorder.store.models import WebSession
from web.app import ROUTES, build

ALL = frozenset(ROLE_USERS)
SUPERVISOR_UP = frozenset({"supervisor", "dpo", "admin"})
DPO_UP = frozenset({"dpo", "admin"})
ADMIN = frozenset({"admin"})
PUBLIC = None  # no login needed: same status for everyone
PRINCIPALS = ["anonymous", "expired_session", "revoked_token", *ROLE_USERS]

Send = Callable[[World, TestClient, str], httpx.Response]


@dataclass(frozen=True)
class Case:
    roles: frozenset[str] | None  # who may; None: public
    ok: int  # the status of an allowed request
    send: Send


def form(c: TestClient, **data: object) -> dict[str, object]:
    return {"csrf_token": c.csrf, **data}  # type: ignore[attr-defined]


def api_headers(c: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": c.csrf}  # type: ignore[attr-defined]


def fresh_recording(w: World) -> str:
    """A recording of alice's (so an agent alice may reach it), new for each request."""
    return add_call(w.rig, "alice", seconds=0.2)[1]


def share_token(w: World) -> str:
    person = w.services.accounts.get("sam")
    assert person is not None
    rid = w.recordings["alice"]
    return w.services.links.create(rid, user_id=person.id, actor="sam", hours=1, max_plays=None)[1]


def share_link_id(w: World) -> int:
    person = w.services.accounts.get("sam")
    assert person is not None
    rid = w.recordings["alice"]
    return w.services.links.create(rid, user_id=person.id, actor="sam", hours=1, max_plays=None)[0]


def share_audio(w: World, c: TestClient, _p: str) -> httpx.Response:
    token = share_token(w)
    page = c.get(f"/s/{token}")
    assert page.status_code == 200
    return c.get(f"/s/{token}/audio")


def enrol_totp(w: World, c: TestClient, _p: str) -> httpx.Response:
    secret = pyotp.random_base32()
    data = form(c, action="enrol", secret=secret, code=pyotp.TOTP(secret).now(), password=PASSWORD)
    return c.post("/account/totp", data=data)


def r(w: World) -> str:
    return w.recordings["alice"]


TABLE: dict[tuple[str, str], Case] = {
    ("GET", "/"): Case(ALL, 303, lambda w, c, p: c.get("/")),
    ("GET", "/login"): Case(PUBLIC, 200, lambda w, c, p: c.get("/login")),
    ("POST", "/login"): Case(PUBLIC, 403, lambda w, c, p: c.post("/login", data={"name": "x"})),
    ("POST", "/logout"): Case(ALL, 303, lambda w, c, p: c.post("/logout", data=form(c))),
    ("GET", "/calls"): Case(ALL, 200, lambda w, c, p: c.get("/calls")),
    ("POST", "/calls"): Case(
        ALL, 303, lambda w, c, p: c.post("/calls", data=form(c, number="0151 12345678"))
    ),
    ("GET", "/calls/{call_id}"): Case(
        ALL, 200, lambda w, c, p: c.get(f"/calls/{w.calls['alice']}")
    ),
    ("GET", "/recordings/{recording_id}"): Case(
        ALL, 200, lambda w, c, p: c.get(f"/recordings/{r(w)}")
    ),
    ("GET", "/recordings/{recording_id}/audio"): Case(
        ALL, 200, lambda w, c, p: c.get(f"/recordings/{r(w)}/audio")
    ),
    ("POST", "/recordings/{recording_id}/share"): Case(
        SUPERVISOR_UP,
        200,
        lambda w, c, p: c.post(f"/recordings/{r(w)}/share", data=form(c, hours=2)),
    ),
    ("POST", "/shares/{link_id}/revoke"): Case(
        SUPERVISOR_UP,
        303,
        lambda w, c, p: c.post(f"/shares/{share_link_id(w)}/revoke", data=form(c)),
    ),
    ("POST", "/recordings/{recording_id}/hold"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            f"/recordings/{fresh_recording(w)}/hold", data=form(c, reason="case 7")
        ),
    ),
    ("POST", "/recordings/{recording_id}/unhold"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(f"/recordings/{r(w)}/unhold", data=form(c, reason="case 7")),
    ),
    ("POST", "/recordings/{recording_id}/delete"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            f"/recordings/{fresh_recording(w)}/delete", data=form(c, reason="asked")
        ),
    ),
    ("GET", "/subjects"): Case(DPO_UP, 200, lambda w, c, p: c.get("/subjects")),
    ("POST", "/subjects/export"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            "/subjects/export", data=form(c, number="+49 151 99999999", reason="req 1")
        ),
    ),
    ("POST", "/subjects/erase"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            "/subjects/erase", data=form(c, number="+49 151 99999999", reason="req 2")
        ),
    ),
    ("GET", "/audit"): Case(DPO_UP, 200, lambda w, c, p: c.get("/audit")),
    ("GET", "/dashboard"): Case(SUPERVISOR_UP, 200, lambda w, c, p: c.get("/dashboard")),
    ("GET", "/account"): Case(ALL, 200, lambda w, c, p: c.get("/account")),
    ("POST", "/account/totp"): Case(ALL, 200, enrol_totp),
    ("GET", "/admin/users"): Case(ADMIN, 200, lambda w, c, p: c.get("/admin/users")),
    ("POST", "/admin/users"): Case(
        ADMIN,
        200,
        lambda w, c, p: c.post("/admin/users", data=form(c, action="disable", name="bob")),
    ),
    ("GET", "/s/{token}"): Case(PUBLIC, 200, lambda w, c, p: c.get(f"/s/{share_token(w)}")),
    ("GET", "/s/{token}/audio"): Case(PUBLIC, 200, share_audio),
    ("GET", "/api/v1/openapi.json"): Case(
        PUBLIC, 200, lambda w, c, p: c.get("/api/v1/openapi.json")
    ),
    ("GET", "/api/v1/me"): Case(ALL, 200, lambda w, c, p: c.get("/api/v1/me")),
    ("GET", "/api/v1/calls"): Case(ALL, 200, lambda w, c, p: c.get("/api/v1/calls")),
    ("POST", "/api/v1/calls/search"): Case(
        ALL,
        200,
        lambda w, c, p: c.post(
            "/api/v1/calls/search", json={"number": NUMBER}, headers=api_headers(c)
        ),
    ),
    ("GET", "/api/v1/recordings"): Case(
        ALL, 200, lambda w, c, p: c.get("/api/v1/recordings?state=encrypted")
    ),
    ("GET", "/api/v1/calls/{call_id}"): Case(
        ALL, 200, lambda w, c, p: c.get(f"/api/v1/calls/{w.calls['alice']}")
    ),
    ("GET", "/api/v1/recordings/{recording_id}"): Case(
        ALL, 200, lambda w, c, p: c.get(f"/api/v1/recordings/{r(w)}")
    ),
    ("GET", "/api/v1/recordings/{recording_id}/audio"): Case(
        SUPERVISOR_UP, 200, lambda w, c, p: c.get(f"/api/v1/recordings/{r(w)}/audio")
    ),
    ("POST", "/api/v1/recordings/{recording_id}/hold"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            f"/api/v1/recordings/{fresh_recording(w)}/hold",
            json={"reason": "x"},
            headers=api_headers(c),
        ),
    ),
    ("POST", "/api/v1/recordings/{recording_id}/unhold"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            f"/api/v1/recordings/{r(w)}/unhold", json={"reason": "x"}, headers=api_headers(c)
        ),
    ),
    ("DELETE", "/api/v1/recordings/{recording_id}"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.request(
            "DELETE",
            f"/api/v1/recordings/{fresh_recording(w)}",
            json={"reason": "x"},
            headers=api_headers(c),
        ),
    ),
    ("POST", "/api/v1/recordings/{recording_id}/shares"): Case(
        SUPERVISOR_UP,
        201,
        lambda w, c, p: c.post(
            f"/api/v1/recordings/{r(w)}/shares", json={"hours": 3}, headers=api_headers(c)
        ),
    ),
    ("DELETE", "/api/v1/shares/{link_id}"): Case(
        SUPERVISOR_UP,
        200,
        lambda w, c, p: c.request(
            "DELETE", f"/api/v1/shares/{share_link_id(w)}", headers=api_headers(c)
        ),
    ),
    ("POST", "/api/v1/subjects/export"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            "/api/v1/subjects/export",
            json={"number": "+4915199999999", "reason": "r"},
            headers=api_headers(c),
        ),
    ),
    ("POST", "/api/v1/subjects/erase"): Case(
        DPO_UP,
        200,
        lambda w, c, p: c.post(
            "/api/v1/subjects/erase",
            json={"number": "+4915199999999", "reason": "r"},
            headers=api_headers(c),
        ),
    ),
    ("GET", "/static/{path}"): Case(PUBLIC, 200, lambda w, c, p: c.get("/static/app.css")),
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (a Mount counts as GET of its files)."""
    found: set[tuple[str, str]] = set()
    for route in build(MagicMock()).routes:
        if isinstance(route, Mount):
            found.add(("GET", route.path + "/{path}"))
        elif isinstance(route, Route):
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return found


def test_every_route_has_an_entry_and_every_entry_a_route() -> None:
    routes = app_routes()
    assert routes - set(TABLE) == set(), "add these routes to TABLE with their roles"
    assert set(TABLE) - routes == set(), "TABLE lists routes the app does not have"
    assert len(routes) == len(ROUTES) + 1  # + the static files


def client_as(w: World, principal: str) -> TestClient:
    if principal in ROLE_USERS:
        return w.client(principal)
    c = w.client()
    if principal == "expired_session":
        w.sign_in(c, "sam")
        with w.services.db.write() as s:
            s.execute(
                sa.update(WebSession).values(
                    idle_expires_at=datetime.now(UTC) - timedelta(seconds=1)
                )
            )
    elif principal == "revoked_token":
        tid, raw = w.services.accounts.create_token("adam", "t", 5, actor="test")
        w.services.accounts.revoke_token(tid, actor="test")
        c.headers["Authorization"] = f"Bearer {raw}"
    return c


def expected(case: Case, path: str, principal: str) -> int:
    if case.roles is None:
        return case.ok
    if principal in ROLE_USERS:
        return case.ok if principal in case.roles else 403
    if path.startswith("/api/"):
        return 401
    return 303  # pages send the anonymous to the login form


@ON_BOTH_STORES
@pytest.mark.parametrize("key", sorted(TABLE), ids=lambda k: f"{k[0]} {k[1]}")
def test_route_answers_each_principal_as_the_table_says(world: World, key: tuple[str, str]) -> None:
    case = TABLE[key]
    got = {}
    for principal in PRINCIPALS:
        response = case.send(world, client_as(world, principal), principal)
        got[principal] = response.status_code
        if response.status_code == 303 and case.roles is not None and principal not in ROLE_USERS:
            assert response.headers["location"].startswith("/login")
    want = {p: expected(case, key[1], p) for p in PRINCIPALS}
    assert got == want


OBJECT_ROUTES = sorted(k for k in TABLE if "{call_id}" in k[1] or "{recording_id}" in k[1])


@ON_BOTH_STORES
@pytest.mark.parametrize("key", OBJECT_ROUTES, ids=lambda k: f"{k[0]} {k[1]}")
def test_an_agent_cannot_reach_another_agents_call_by_its_id(
    world: World, key: tuple[str, str]
) -> None:
    """bob is an agent too: every object route on alice's call or recording is refused."""
    method, path = key
    url = path.replace("{call_id}", world.calls["alice"]).replace(
        "{recording_id}", world.recordings["alice"]
    )
    c = world.client("bob")
    kw = (
        {"json": {"reason": "x"}, "headers": api_headers(c)}
        if path.startswith("/api/") and method != "GET"
        else {}
    )
    if not path.startswith("/api/") and method != "GET":
        kw = {"data": form(c, reason="x")}
    response = c.request(method, url, **kw)
    assert response.status_code == 403, response.text
