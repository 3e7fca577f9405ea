"""`callconsent users …` and `links revoke`, and `--actor` naming a user of the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from callconsent import cli
from callconsent.app import App
from recorder.store.models import ApiToken, AuditEntry, User
from web.accounts import Accounts

PASSWORD = "a long enough password"


def run(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), *args])


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCONSENT_USER_PASSWORD", PASSWORD)


def actions(app: App) -> list[tuple[str, str, str | None]]:
    with app.db.read() as s:
        rows = s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))
        return [(r.action, r.actor, r.subject_id) for r in rows if r.subject_type == "user"]


def test_add_list_role_disable_enable(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "users", "add", "adam", "--role", "admin") == 0  # the first one
    assert run(config_file, "users", "add", "dana", "--role", "dpo", "--actor", "nobody") == 1
    assert "unknown actor 'nobody'" in capsys.readouterr().err
    assert run(config_file, "users", "add", "dana", "--role", "dpo", "--actor", "adam") == 0
    assert run(config_file, "users", "add", "dana", "--role", "dpo") == 1  # exists
    assert "exists already" in capsys.readouterr().err
    assert run(config_file, "users", "role", "dana", "admin") == 0
    assert run(config_file, "users", "disable", "dana") == 0
    assert run(config_file, "users", "list", "--json") == 0
    (_, row) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["role"], row["disabled"], row["web_login"]) == (
        "dana",
        "admin",
        True,
        True,
    )
    assert run(config_file, "users", "enable", "dana") == 0
    assert Accounts(app.db, app.audit_ctx).get("dana").disabled is False
    with app.db.read() as s:
        stored = s.scalars(sa.select(User).where(User.name == "dana")).one().password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    got = actions(app)[1:]
    assert got[0] == ("user.added", "adam", "dana")
    assert [a for a, _, _ in got[1:]] == ["user.role_changed", "user.disabled", "user.enabled"]


def test_short_password_and_bad_name_are_refused(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLCONSENT_USER_PASSWORD", "short")
    assert run(config_file, "users", "add", "dana", "--role", "dpo") == 1
    assert "at least 10 characters" in capsys.readouterr().err
    assert run(config_file, "users", "add", "bad name!", "--role", "dpo", "--no-password") == 1
    assert "letters, digits" in capsys.readouterr().err


def test_tokens_are_shown_once_and_stored_hashed(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "users", "add", "api", "--role", "supervisor") == 0
    capsys.readouterr()
    assert run(config_file, "users", "token", "api", "--label", "crm", "--days", "7") == 0
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    accounts = Accounts(app.db, app.audit_ctx)
    assert accounts.token_owner(raw).name == "api"
    with app.db.read() as s:
        tok = s.scalars(sa.select(ApiToken)).one()
    assert raw not in tok.token_hash and len(raw) >= 43
    assert run(config_file, "users", "token", "api", "--revoke", str(tok.id)) == 0
    assert accounts.token_owner(raw) is None


def test_disabling_a_user_revokes_their_tokens(app: App, config_file: Path) -> None:
    accounts = Accounts(app.db, app.audit_ctx)
    accounts.add("api", "supervisor", None, actor="t")
    _, raw = accounts.create_token("api", "x", 5, actor="t")
    assert run(config_file, "users", "disable", "api") == 0
    assert run(config_file, "users", "enable", "api") == 0
    assert accounts.token_owner(raw) is None  # enabling does not bring old tokens back


def test_actor_must_be_an_enabled_user(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callconsent.authz import NotAllowed, authorize

    accounts = Accounts(app.db, app.audit_ctx)
    accounts.add("dana", "dpo", None, actor="t")
    accounts.add("carl", "supervisor", None, actor="t")

    def check(actor: str) -> None:
        authorize(
            app.config,
            app.db,
            app.audit_ctx,
            actor=actor,
            permission="recording.delete",
            subject_type="recording",
            subject_id="r-1",
        )

    check("dana")
    with pytest.raises(NotAllowed, match="is supervisor"):
        check("carl")
    with pytest.raises(NotAllowed, match=r"unknown actor 'nobody'.*users add"):
        check("nobody")
    accounts.set_disabled("dana", True, actor="t")
    with pytest.raises(NotAllowed, match="user 'dana' is disabled"):
        check("dana")


def test_actors_section_still_works_with_a_warning_then_imports(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(config_file.read_text() + '\n[actors]\nolga = "dpo"\n')
    assert run(config_file, "recordings", "unhold", "nope", "--reason", "r", "--actor", "olga") == 1
    err = capsys.readouterr().err
    assert "deprecated" in err and "users import-actors" in err
    assert "no recording" in err  # authorised, then the recording is unknown
    assert run(config_file, "users", "import-actors") == 0
    assert Accounts(app.db, app.audit_ctx).get("olga").role == "dpo"
    assert run(config_file, "recordings", "unhold", "nope", "--reason", "r", "--actor", "olga") == 1
    assert "deprecated" not in capsys.readouterr().err


def test_optional_actor_must_name_an_enabled_user_too(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Commands whose --actor only names who acted (show, decrypt, links revoke, users …)."""
    accounts = Accounts(app.db, app.audit_ctx)
    accounts.add("vera", "supervisor", None, actor="t")
    reason = ("--reason", "r")
    assert run(config_file, "recordings", "show", "nope", *reason, "--actor", "ghost") == 1
    assert "unknown actor 'ghost'" in capsys.readouterr().err
    assert run(config_file, "recordings", "show", "nope", *reason, "--actor", "vera") == 1
    assert "no recording nope" in capsys.readouterr().err  # vera passed, the id did not
    accounts.set_disabled("vera", True, actor="t")
    assert run(config_file, "keys", "export-public", *reason, "--actor", "vera") == 1
    assert "user 'vera' is disabled" in capsys.readouterr().err
    assert run(config_file, "links", "revoke", "1", "--actor", "ghost") == 1


def test_totp_reset_turns_a_lost_second_factor_off(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "users", "add", "adam", "--role", "admin") == 0
    assert run(config_file, "users", "add", "tina", "--role", "dpo", "--totp") == 0
    assert run(config_file, "users", "totp-reset", "tina", "--actor", "adam") == 0
    assert "tina: TOTP off" in capsys.readouterr().out
    with app.db.read() as s:
        assert s.scalars(sa.select(User.totp_secret).where(User.name == "tina")).one() is None
    assert ("user.totp_reset", "adam", "tina") in actions(app)
    assert run(config_file, "users", "totp-reset", "tina", "--actor", "adam") == 1
    assert "tina has no TOTP second factor" in capsys.readouterr().err
    assert run(config_file, "users", "totp-reset", "nemo", "--actor", "adam") == 1
