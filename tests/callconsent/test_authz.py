from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from callconsent import config as cfgmod
from callconsent.app import App
from callconsent.authz import NotAllowed, authorize, invoking_os_user
from recorder.store.models import AuditEntry


@pytest.fixture
def roles_app(tmp_path: Path):
    path = tmp_path / "callconsent.toml"
    me = invoking_os_user()
    path.write_text(
        '[daemon]\ndata_dir = "data"\n'
        '[actors]\nbob = "agent"\ncarol = "supervisor"\n'
        f'[actors.dana]\nrole = "dpo"\nos_users = ["{me}"]\n'
        '[actors.erin]\nrole = "admin"\nos_users = ["somebody-else"]\n'
    )
    app = App.open(cfgmod.load(path))
    yield app
    app.close()


def check(app: App, actor: str) -> None:
    authorize(
        app.config,
        app.db,
        app.audit_ctx,
        actor=actor,
        permission="recording.delete",
        subject_type="recording",
        subject_id="r-1",
    )


def test_dpo_may_delete(roles_app: App) -> None:
    check(roles_app, "dana")
    with roles_app.db.read() as s:
        assert s.scalars(sa.select(AuditEntry)).all() == []


@pytest.mark.parametrize(
    ("actor", "why"),
    [
        ("bob", "actor 'bob' is agent; recording.delete needs admin or dpo"),
        ("carol", "is supervisor"),
        ("mallory", "unknown actor 'mallory'"),
        ("erin", "may not act as 'erin'"),
    ],
)
def test_refusals_are_audited_with_the_os_user(roles_app: App, actor: str, why: str) -> None:
    with pytest.raises(NotAllowed, match=why):
        check(roles_app, actor)
    with roles_app.db.read() as s:
        row = s.scalars(sa.select(AuditEntry)).one()
    assert (row.action, row.actor, row.subject_id) == ("authz.refused", actor, "r-1")
    assert row.os_user == roles_app.audit_ctx.os_user != ""
    details = json.loads(row.details)
    assert details["permission"] == "recording.delete" and why in details["reason"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[actors]\nx = "boss"\n', "actors.x"),
        ('[actors.x]\nrole = "dpo"\nos_user = ["a"]\n', "actors.x.os_user"),
        ('[actors.x]\nrole = "dpo"\nos_users = "a"\n', "actors.x.os_users"),
    ],
)
def test_bad_actor_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path)
    assert err.value.key == key


def test_sudo_user_counts_only_under_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUDO_USER is an environment variable: set by an ordinary account it proves nothing."""
    import os
    import pwd

    monkeypatch.setenv("SUDO_USER", "dana")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert invoking_os_user() == "dana"  # what sudo leaves behind
    nobody = pwd.getpwnam("nobody").pw_uid
    monkeypatch.setattr(os, "geteuid", lambda: nobody)
    assert invoking_os_user() == "nobody"  # not dana
