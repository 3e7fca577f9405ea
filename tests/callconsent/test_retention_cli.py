"""`callconsent retention …` and `recordings hold|unhold|delete` from the command line."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from recstore import PASSPHRASE, Rig, make_rig, write_wav

from callconsent import cli
from callconsent.app import App
from recorder.store.models import AuditEntry, Recording

ACTORS = '\n[actors]\ndana = "dpo"\nbob = "agent"\n'


@pytest.fixture
def rig(app: App, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    config_file.write_text(config_file.read_text() + ACTORS)
    monkeypatch.setenv("CALLCONSENT_KEY_PASSPHRASE", PASSPHRASE.decode())
    return make_rig(app)


def encrypted(rig: Rig, *, expired: bool = False) -> str:
    rid, path = rig.new_recording()
    write_wav(path, 0.3)
    rig.app.ledger.recording_closed(rid)
    if expired:
        with rig.app.db.write() as s:
            s.get(Recording, rid).expires_at = datetime.now(UTC) - timedelta(minutes=1)
    return rid


def run(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), *args])


def state(rig: Rig, rid: str) -> str:
    with rig.app.db.read() as s:
        return s.get(Recording, rid).state


def test_retention_run_dry_run_then_for_real(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, young = encrypted(rig, expired=True), encrypted(rig)
    assert run(config_file, "retention", "run", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would purge 1 recording(s)" in out and old in out
    assert state(rig, old) == "encrypted"
    assert run(config_file, "retention", "run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recordings"] == [old] and report["failed"] == [] and not report["dry_run"]
    assert (state(rig, old), state(rig, young)) == ("purged", "encrypted")


def test_hold_unhold_delete_need_a_dpo(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = encrypted(rig, expired=True)
    assert run(config_file, "recordings", "hold", rid, "--reason", "case 1", "--actor", "bob") == 1
    assert "bob' is agent" in capsys.readouterr().err
    assert run(config_file, "recordings", "hold", rid, "--reason", "case 1", "--actor", "dana") == 0
    assert f"{rid}: held" in capsys.readouterr().out
    assert run(config_file, "retention", "run") == 0
    assert "1 expired but held (kept)" in capsys.readouterr().out and state(rig, rid) == "encrypted"
    assert run(config_file, "recordings", "delete", rid, "--reason", "r", "--actor", "dana") == 1
    assert "under legal hold" in capsys.readouterr().err
    assert (
        run(config_file, "recordings", "unhold", rid, "--reason", "closed", "--actor", "dana") == 0
    )
    assert run(config_file, "recordings", "delete", rid, "--reason", "r", "--actor", "dana") == 0
    assert state(rig, rid) == "purged"
    with rig.app.db.read() as s:
        acts = list(s.scalars(sa.select(AuditEntry.action).where(AuditEntry.subject_id == rid)))
        os_users = set(s.scalars(sa.select(AuditEntry.os_user).where(AuditEntry.actor == "dana")))
    assert acts == [
        "recording.started",
        "recording.closed",
        "recording.encrypted",
        "authz.refused",
        "recording.held",
        "recording.released",
        "recording.deleted",
    ]
    assert os_users and "" not in os_users


def test_recompute_is_explicit_and_for_dpos(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = encrypted(rig)
    config_file.write_text(
        config_file.read_text()
        + "\n[retention]\ncategories = { sales = 90 }\n"
        + '[policies.sales]\nretention_category = "sales"\n'
    )
    assert (
        run(
            config_file,
            "retention",
            "recompute",
            "--campaign",
            "sales",
            "--actor",
            "bob",
            "--reason",
            "v2",
        )
        == 1
    )
    assert (
        run(
            config_file,
            "retention",
            "recompute",
            "--campaign",
            "sales",
            "--actor",
            "dana",
            "--reason",
            "v2",
        )
        == 0
    )
    assert "1 recording(s) changed" in capsys.readouterr().out
    with rig.app.db.read() as s:
        rec = s.get(Recording, rid)
    assert rec.expires_at == rec.started_at + timedelta(days=90)


def test_keys_destroy_only_a_spent_epoch(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import recorder.governance.retention

    rid = encrypted(rig)
    with rig.app.db.read() as s:
        epoch = s.get(Recording, rid).key_epoch
    assert run(config_file, "keys", "destroy", epoch, "--reason", "r", "--actor", "dana") == 1
    assert "is not spent" in capsys.readouterr().err
    assert (rig.app.keydir.path / f"epoch-{epoch}.key").exists()
    with rig.app.db.write() as s:  # the recording is purged: nothing needs the epoch now
        s.get(Recording, rid).state = "purged"

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.now(tz) + timedelta(days=60)  # the epoch's week is over

    monkeypatch.setattr(recorder.governance.retention, "datetime", Later)
    key = rig.app.keydir.path / f"epoch-{epoch}.key"
    leftover = key.with_name(f".{key.name}.tmp-0bad")
    os.link(key, leftover)  # a key writer that crashed between its link and its unlink
    assert run(config_file, "keys", "destroy", epoch, "--reason", "r", "--actor", "bob") == 1
    assert run(config_file, "keys", "destroy", epoch, "--reason", "spent", "--actor", "dana") == 0
    assert not key.exists() and not leftover.exists()  # no second name survives the shredding
