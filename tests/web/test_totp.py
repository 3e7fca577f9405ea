"""TOTP enrolment in the browser (``/account``): a new secret with its URI and QR code, in force
only once confirmed with a current code and the password; turned off with the password and a
code; reset by an admin. CSRF on each, audit rows naming the user, wrong codes counted. A
code is accepted once, at login as here (RFC 6238, 5.2)."""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import parse_qs, urlparse

import pyotp
import sqlalchemy as sa
from conftest import ON_BOTH_STORES, PASSWORD, World, next_code
from starlette.testclient import TestClient
from test_login_and_security import audit_actions, login

from recorder.store.models import User
from web.auth import AddressThrottle, LoginRefused, log_in

pytestmark = ON_BOTH_STORES  # every test here on SQLite and on PostgreSQL


def shown_secret(page: str) -> str:
    m = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert m, "the account page shows no secret to enrol"
    return m.group(1)


def enrol(c: TestClient, secret: str, code: str, password: str = PASSWORD) -> object:
    return c.post(
        "/account/totp",
        data={
            "csrf_token": c.csrf,  # type: ignore[attr-defined]
            "action": "enrol",
            "secret": secret,
            "code": code,
            "password": password,
        },
    )


def has_totp(w: World, name: str) -> bool:
    person = w.services.accounts.get(name)
    assert person is not None
    return person.has_totp


def test_enrolment_shows_secret_uri_and_qr_and_takes_effect_only_when_confirmed(
    world: World,
) -> None:
    c = world.client("supervisor")
    page = c.get("/account")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    secret = shown_secret(page.text)
    uri = re.search(r'<code id="totp-uri">([^<]+)</code>', page.text).group(1)
    parsed = urlparse(uri.replace("&amp;", "&"))
    assert (parsed.scheme, parsed.netloc, parsed.path) == ("otpauth", "totp", "/callconsent:sam")
    assert parse_qs(parsed.query) == {"secret": [secret], "issuer": ["callconsent"]}
    assert re.search(r'<div id="totp-qr"><svg [^>]*class="segno"', page.text)
    assert shown_secret(c.get("/account").text) != secret  # a new one each time, none stored
    assert not has_totp(world, "sam")

    wrong = enrol(c, secret, "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    assert wrong.status_code == 403 and not has_totp(world, "sam")
    assert enrol(c, secret, pyotp.TOTP(secret).now(), "not my password").status_code == 403
    assert [json.loads(d)["reason"] for _, d in audit_actions(world, "user.totp_refused")] == [
        "wrong_code",
        "wrong_password",
    ]
    with world.services.db.read() as s:
        assert s.scalars(sa.select(User.failed_logins).where(User.name == "sam")).one() == 2

    confirmed_with = pyotp.TOTP(secret).now()
    ok = enrol(c, secret, confirmed_with)
    assert ok.status_code == 200 and 'id="totp-state">on<' in ok.text and has_totp(world, "sam")
    assert [actor for actor, _ in audit_actions(world, "user.totp_enrolled")] == ["sam"]
    assert "totp-secret" not in c.get("/account").text  # enrolled: no new secret offered
    assert enrol(c, pyotp.random_base32(), "123456").status_code == 409

    fresh = world.client()
    assert login(fresh, "sam", PASSWORD).status_code == 401
    # the code that confirmed the enrolment is spent; the next step's is not
    assert login(fresh, "sam", PASSWORD, confirmed_with).status_code == 401
    assert login(fresh, "sam", PASSWORD, next_code(secret)).status_code == 303


def test_enrolment_needs_the_csrf_token_and_a_secret_of_ours(world: World) -> None:
    c = world.client("agent")
    secret = shown_secret(c.get("/account").text)
    code = pyotp.TOTP(secret).now()
    r = c.post(
        "/account/totp",
        data={"action": "enrol", "secret": secret, "code": code, "password": PASSWORD},
    )
    assert r.status_code == 403 and "CSRF" in r.text and not has_totp(world, "alice")
    assert enrol(c, "tooshort", code).status_code == 400
    assert not has_totp(world, "alice")


def test_turning_it_off_needs_password_and_code(world: World) -> None:
    secret = world.services.accounts.add("tina", "dpo", PASSWORD, actor="adam", totp=True)
    assert secret
    c = world.client("tina")

    def disable(code: str, password: str = PASSWORD) -> int:
        data = {"csrf_token": c.csrf, "action": "disable", "code": code, "password": password}
        return c.post("/account/totp", data=data).status_code

    assert disable(pyotp.TOTP(secret).now(), "wrong password!") == 403
    assert disable("000000" if pyotp.TOTP(secret).now() != "000000" else "111111") == 403
    assert has_totp(world, "tina")
    assert disable(pyotp.TOTP(secret).now()) == 200 and not has_totp(world, "tina")
    assert [actor for actor, _ in audit_actions(world, "user.totp_disabled")] == ["tina"]
    assert disable(pyotp.TOTP(secret).now()) == 409  # nothing left to turn off
    assert login(world.client(), "tina", PASSWORD).status_code == 303


def test_wrong_codes_lock_the_account_as_failed_logins_do(world: World) -> None:
    c = world.client("supervisor")
    secret = shown_secret(c.get("/account").text)
    for _ in range(world.services.settings.login_max_failures):
        assert enrol(c, secret, "not a code").status_code == 403
    assert enrol(c, secret, pyotp.TOTP(secret).now()).status_code == 403  # locked now
    assert not has_totp(world, "sam")
    assert login(world.client(), "sam", PASSWORD).status_code == 401


def test_an_admin_resets_a_users_second_factor(world: World) -> None:
    secret = world.services.accounts.add("tina", "supervisor", PASSWORD, actor="adam", totp=True)
    assert secret
    admin = world.client("admin")
    page = admin.get("/admin/users").text
    assert page.count('value="reset_totp"') == 1  # only tina has one
    r = admin.post(
        "/admin/users", data={"csrf_token": admin.csrf, "action": "reset_totp", "name": "tina"}
    )
    assert r.status_code == 200 and not has_totp(world, "tina")
    assert [(a, json.loads(d)["address"]) for a, d in audit_actions(world, "user.totp_reset")] == [
        ("adam", "testclient")
    ]
    again = admin.post(
        "/admin/users", data={"csrf_token": admin.csrf, "action": "reset_totp", "name": "tina"}
    )
    assert again.status_code == 409
    assert login(world.client(), "tina", PASSWORD).status_code == 303


def login_reasons(w: World) -> list[str]:
    return [json.loads(d)["reason"] for _, d in audit_actions(w, "web.login_failed")]


def failed_logins(w: World, name: str) -> int:
    with w.services.db.read() as s:
        return s.scalars(sa.select(User.failed_logins).where(User.name == name)).one()


def test_a_code_is_accepted_once_at_login(world: World) -> None:
    """Someone who saw a code typed (over a shoulder, on a screen share) cannot log in with
    it while it is still current: each 30-second step's code logs in once, and a code of an
    earlier step than the last one used is refused too. A reused code counts as a failed
    login; the next step's code still logs in."""
    secret = world.services.accounts.add("tina", "supervisor", PASSWORD, actor="adam", totp=True)
    assert secret
    first = pyotp.TOTP(secret).now()
    assert login(world.client(), "tina", PASSWORD, first).status_code == 303
    later = next_code(secret)
    assert later != first
    assert login(world.client(), "tina", PASSWORD, later).status_code == 303
    assert login(world.client(), "tina", PASSWORD, later).status_code == 401
    assert login_reasons(world) == ["reused_code"]
    assert failed_logins(world, "tina") == 1
    assert login(world.client(), "tina", PASSWORD, first).status_code == 401  # an earlier step
    assert failed_logins(world, "tina") == 2


def test_two_logins_with_one_code_at_once_let_one_in(world: World) -> None:
    """Two logins with the same code at the same moment (a code relayed by an attacker as the
    user types it): one gets in, the other is refused, on SQLite and on PostgreSQL (where the
    two transactions would both have read the user's row before either wrote it)."""
    secret = world.services.accounts.add("tina", "supervisor", PASSWORD, actor="adam", totp=True)
    assert secret
    code = pyotp.TOTP(secret).now()
    throttle = AddressThrottle(world.services.db)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(address: str) -> None:
        start.wait()
        try:
            log_in(world.services, throttle, "tina", PASSWORD, code, address)
            outcomes.append("in")
        except LoginRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(a,)) for a in ("10.0.0.1", "10.0.0.2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["in", "refused"]
    assert login_reasons(world) == ["reused_code"]


def test_turning_it_off_refuses_the_code_that_logged_in(world: World) -> None:
    secret = world.services.accounts.add("tina", "dpo", PASSWORD, actor="adam", totp=True)
    assert secret
    code = pyotp.TOTP(secret).now()
    c = world.client()
    assert login(c, "tina", PASSWORD, code).status_code == 303
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/account").text).group(1)

    def disable(code: str) -> int:
        data = {"csrf_token": csrf, "action": "disable", "code": code, "password": PASSWORD}
        r = c.post("/account/totp", data=data)
        said.append(r.text)
        return r.status_code

    said: list[str] = []
    assert disable(code) == 403 and has_totp(world, "tina")
    assert "that code was used already: wait for the next one" in said[-1]
    assert [json.loads(d)["reason"] for _, d in audit_actions(world, "user.totp_refused")] == [
        "reused_code"
    ]
    assert disable(next_code(secret)) == 200 and not has_totp(world, "tina")
    with world.services.db.read() as s:  # a new secret starts afresh
        assert s.scalars(sa.select(User.totp_last_step).where(User.name == "tina")).one() is None
