"""Logins (throttled, locked out, audited, with TOTP), sessions (expiring, revocable), cookies,
CSRF, security headers, and clear 4xx answers to bad input."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import sqlalchemy as sa
from conftest import NUMBER, ON_BOTH_STORES, PASSWORD, World
from starlette.testclient import TestClient

from recorder.store.models import AuditEntry, User, WebSession

pytestmark = ON_BOTH_STORES  # every test here on SQLite and on PostgreSQL


def login(c: TestClient, name: str, password: str, code: str = "") -> object:
    page = c.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    return c.post(
        "/login",
        data={
            "login_token": token,
            "name": name,
            "password": password,
            "code": code,
            "next": "/calls",
        },
    )


def audit_actions(w: World, action: str) -> list[tuple[str, str]]:
    with w.services.db.read() as s:
        rows = s.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        )
        return [(r.actor, r.details) for r in rows]


def test_login_sets_a_strict_httponly_secure_cookie_and_is_audited(world: World) -> None:
    c = world.client()
    r = login(c, "sam", PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/calls"
    cookie = r.headers["set-cookie"]
    assert (
        "cc_session=" in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie
        and "Secure" in cookie
    )
    assert c.get("/calls").status_code == 200
    assert [a for a, _ in audit_actions(world, "web.login")] == ["sam"]
    with world.services.db.read() as s:
        stored = s.scalars(sa.select(WebSession.id_hash)).all()
    raw = re.search(r"cc_session=([^;]+)", cookie).group(1)
    assert raw not in stored and len(stored) == 1  # kept as its hash only


def test_no_secure_flag_over_plain_http(world: World) -> None:
    c = TestClient(world.app, base_url="http://testserver", follow_redirects=False)
    r = login(c, "sam", PASSWORD)
    assert "Secure" not in r.headers["set-cookie"]


def test_login_without_the_forms_token_is_refused(world: World) -> None:
    c = world.client()
    r = c.post("/login", data={"name": "sam", "password": PASSWORD})
    assert r.status_code == 403


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(world: World) -> None:
    c = world.client()
    for _ in range(5):
        r = login(c, "sam", "wrong password!")
        assert r.status_code == 401
    assert "locked" in r.text
    r = login(c, "sam", PASSWORD)
    assert r.status_code == 401 and "locked" in r.text
    failures = audit_actions(world, "web.login_failed")
    assert len(failures) == 6 and all(actor == "sam" for actor, _ in failures)
    assert '"reason":"locked"' in failures[-1][1]
    world.services.accounts.set_password("sam", PASSWORD, actor="adam")  # an admin lifts it
    assert login(c, "sam", PASSWORD).status_code == 303


def test_one_address_is_throttled_across_users(world: World) -> None:
    world.services.settings = type(world.services.settings)(address_max_failures=3)
    c = world.client()
    for name in ("nobody", "x", "y"):
        assert login(c, name, "whatever pass").status_code == 401
    r = login(c, "sam", PASSWORD)
    assert r.status_code == 401 and "your address" in r.text


def test_a_typed_phone_number_as_name_is_not_audited(world: World) -> None:
    login(world.client(), NUMBER, "whatever pass")
    assert audit_actions(world, "web.login_failed")[0][0] == "(invalid)"


def test_totp_is_required_when_enrolled(world: World) -> None:
    secret = world.services.accounts.add("tina", "supervisor", PASSWORD, actor="adam", totp=True)
    assert secret
    c = world.client()
    assert login(c, "tina", PASSWORD, "000000").status_code == 401
    assert login(c, "tina", PASSWORD, pyotp.TOTP(secret).now()).status_code == 303


def test_disabled_users_and_password_less_users_cannot_log_in(world: World) -> None:
    world.services.accounts.add("cli", "dpo", None, actor="adam")
    world.services.accounts.set_disabled("bob", True, actor="adam")
    c = world.client()
    assert login(c, "cli", "anything at all").status_code == 401
    assert login(c, "bob", PASSWORD).status_code == 401


def test_sessions_end_idle_absolute_on_logout_and_on_disable(world: World) -> None:
    c = world.client("supervisor")
    assert c.get("/calls").status_code == 200
    with world.services.db.write() as s:
        s.execute(
            sa.update(WebSession).values(
                absolute_expires_at=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
    assert c.get("/calls").status_code == 303
    c = world.client("supervisor")
    assert c.post("/logout", data={"csrf_token": c.csrf}).status_code == 303
    assert c.get("/calls").status_code == 303
    c = world.client("agent")
    world.services.accounts.set_disabled("alice", True, actor="adam")
    assert c.get("/calls").status_code == 303
    assert audit_actions(world, "web.logout")[0][0] == "sam"


def test_every_state_change_needs_the_csrf_token(world: World) -> None:
    c = world.client("dpo")
    rid = world.recordings["alice"]
    r = c.post(f"/recordings/{rid}/hold", data={"reason": "r"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post(f"/recordings/{rid}/hold", data={"reason": "r", "csrf_token": "forged"})
    assert r.status_code == 403
    r = c.post(f"/api/v1/recordings/{rid}/hold", json={"reason": "r"})
    assert r.status_code == 403  # an API call with the session cookie needs X-CSRF-Token too
    assert (
        c.post(f"/recordings/{rid}/hold", data={"reason": "r", "csrf_token": c.csrf}).status_code
        == 200
    )


def test_security_headers_on_every_response(world: World) -> None:
    c = world.client("supervisor")
    for path in ("/calls", "/login", "/api/v1/calls", "/nowhere", "/static/app.css"):
        h = c.get(path).headers
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer"
        csp = h["content-security-policy"]
        assert (
            "script-src 'self'" in csp
            and "unsafe-inline" not in csp
            and "frame-ancestors 'none'" in csp
        )
    assert c.get("/calls").headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script(world: World) -> None:
    c = world.client("admin")
    for path in (
        "/calls",
        "/dashboard",
        f"/recordings/{world.recordings['alice']}",
        "/admin/users",
        "/account",  # the QR code is inline SVG, no script
    ):
        for tag in re.findall(r"<script[^>]*>", c.get(path).text):
            assert "src=" in tag or 'type="application/json"' in tag, tag


@pytest.mark.parametrize(
    ("method", "path", "kw", "status"),
    [
        ("GET", "/calls/not-a-call", {}, 404),
        ("GET", "/recordings/" + "x" * 300, {}, 404),
        ("GET", "/calls?since=yesterday", {}, 400),
        ("GET", "/calls?direction=sideways", {}, 400),
        ("GET", "/calls?after=%%%", {}, 400),
        ("GET", "/calls?campaign=" + "a" * 3000, {}, 414),
        ("GET", "/api/v1/calls?limit=100000", {}, 400),
        (
            "POST",
            "/api/v1/calls/search",
            {"content": b"number=1", "headers": {"content-type": "text/plain"}},
            415,
        ),
        (
            "POST",
            "/api/v1/calls/search",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("POST", "/api/v1/calls/search", {"json": {"number": "not a number"}}, 400),
        (
            "POST",
            "/api/v1/calls/search",
            {"content": b"x" * 70000, "headers": {"content-type": "application/json"}},
            413,
        ),
        ("DELETE", "/api/v1/shares/abc", {}, 404),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    world: World, method: str, path: str, kw: dict, status: int
) -> None:
    c = world.client("supervisor")
    kw = dict(kw)  # the parameter is shared by both stores' runs: pop from a copy
    headers = {"X-CSRF-Token": c.csrf, **kw.pop("headers", {})}
    r = c.request(method, path, headers=headers, **kw)
    assert r.status_code == status, r.text
    if path.startswith("/api/"):
        assert r.json()["status"] == status and r.json()["error"]


def test_no_phone_number_or_token_in_log_lines(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    c = world.client("supervisor")
    r = c.post("/calls", data={"csrf_token": c.csrf, "number": "0151 12345678"})
    assert r.status_code == 303 and "12345678" not in r.headers["location"]
    c.get(r.headers["location"])
    token = world.services.links.create(
        world.recordings["alice"], user_id=1, actor="sam", hours=1, max_plays=None
    )[1]
    world.client().get(f"/s/{token}")
    lines = [
        rec.getMessage() + str(getattr(rec, "kv", ""))
        for rec in caplog.records
        if rec.name.startswith("callconsent")
    ]
    assert lines and not any("12345678" in line or token in line for line in lines)
    assert any("/s/{token}" in line for line in lines)


def test_the_user_row_counts_failures_and_resets_on_success(world: World) -> None:
    c = world.client()
    login(c, "dora", "wrong password!")
    with world.services.db.read() as s:
        assert s.scalars(sa.select(User).where(User.name == "dora")).one().failed_logins == 1
    login(c, "dora", PASSWORD)
    with world.services.db.read() as s:
        u = s.scalars(sa.select(User).where(User.name == "dora")).one()
    assert (u.failed_logins, u.locked_until) == (0, None) and u.last_login_at is not None


def test_trusted_proxy_sso_header_and_forwarded_address_only_from_the_proxy(world: World) -> None:
    world.services.settings = type(world.services.settings)(
        trusted_proxy="10.0.0.5", proxy_auth_header="Remote-User"
    )
    proxy = TestClient(
        world.app, base_url="http://testserver", client=("10.0.0.5", 4000), follow_redirects=False
    )
    sso = {"Remote-User": "sam", "X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert proxy.get("/api/v1/me", headers=sso).json()["via"] == "proxy"
    assert proxy.get("/api/v1/me", headers={**sso, "Remote-User": "nobody"}).status_code == 401
    elsewhere = TestClient(world.app, client=("10.0.0.9", 4000), follow_redirects=False)
    assert elsewhere.get("/api/v1/me", headers=sso).status_code == 401  # not from the proxy
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    browser = TestClient(
        world.app,
        "https://testserver",
        client=("10.0.0.5", 4001),
        headers=forwarded,
        follow_redirects=False,
    )
    r = login(browser, "dora", "wrong password!")
    assert r.status_code == 401
    assert '"address":"198.51.100.7"' in audit_actions(world, "web.login_failed")[-1][1]
    ok = login(browser, "dora", PASSWORD)
    assert "Secure" in ok.headers["set-cookie"]  # TLS at the proxy


@pytest.mark.parametrize(
    ("nxt", "where"),
    [
        ("/audit", "/audit"),
        ("//evil.example", "/calls"),
        ("/\\evil.example", "/calls"),
        ("https://evil.example", "/calls"),
    ],
)
def test_login_goes_back_only_to_a_page_of_ours(world: World, nxt: str, where: str) -> None:
    c = world.client()
    page = c.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    r = c.post(
        "/login", data={"login_token": token, "name": "dora", "password": PASSWORD, "next": nxt}
    )
    assert r.status_code == 303 and r.headers["location"] == where
