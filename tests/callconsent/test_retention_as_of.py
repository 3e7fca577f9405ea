"""`callconsent retention run --as-of DATETIME` (issue 14, point 11): a preview of another
day's purge and key destruction with --dry-run; for real only when an admin forces it, with
a reason, audited; the purge's own audit rows name the date it was judged as of."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from recstore import PASSPHRASE, Rig, make_rig, write_wav

from callconsent import cli
from callconsent.app import App
from recorder.store.models import AuditEntry, KeyEpoch, Recording

ACTORS = '\n[actors]\nada = "admin"\ndana = "dpo"\n'


@pytest.fixture
def rig(app: App, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    config_file.write_text(config_file.read_text() + ACTORS)
    monkeypatch.setenv("CALLCONSENT_KEY_PASSPHRASE", PASSPHRASE.decode())
    return make_rig(app)


def encrypted(rig: Rig) -> Recording:
    rid, path = rig.new_recording()
    write_wav(path, 0.3)
    rig.app.ledger.recording_closed(rid)
    with rig.app.db.read() as s:
        rec = s.get(Recording, rid)
        assert rec is not None and rec.state == "encrypted" and rec.expires_at is not None
        return rec


def run(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), *args])


def snapshot(rig: Rig) -> tuple[list[tuple[str, str]], list[str | None], int]:
    """Recording states, epochs' destruction times, audit rows: what a preview must not move."""
    with rig.app.db.read() as s:
        states = sorted(tuple(r) for r in s.execute(sa.select(Recording.id, Recording.state)))
        destroyed = list(s.scalars(sa.select(KeyEpoch.destroyed_at).order_by(KeyEpoch.id)))
        audit_rows = s.scalar(sa.select(sa.func.count()).select_from(AuditEntry))
    return states, [str(d) for d in destroyed], int(audit_rows or 0)


def after_expiry(rec: Recording) -> datetime:
    expires = rec.expires_at if rec.expires_at.tzinfo else rec.expires_at.replace(tzinfo=UTC)
    return expires + timedelta(days=8)  # past the expiry and its epoch's week


def test_dry_run_as_of_a_later_date_previews_its_purge_and_shredding(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = encrypted(rig)
    capsys.readouterr()
    before = snapshot(rig)
    assert run(config_file, "retention", "run", "--dry-run", "--json") == 0
    today = json.loads(capsys.readouterr().out)
    assert today["recordings"] == [] and today["as_of"] is None  # nothing is due today
    when = after_expiry(rec).isoformat()
    assert run(config_file, "retention", "run", "--dry-run", "--as-of", when, "--json") == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["dry_run"] and preview["recordings"] == [rec.id]
    assert rec.key_epoch in preview["epochs_destroyed"]
    assert datetime.fromisoformat(preview["as_of"]) == after_expiry(rec)
    assert snapshot(rig) == before  # a preview changes nothing, audits nothing
    assert run(config_file, "retention", "run", "--dry-run", "--as-of", when) == 0
    out = capsys.readouterr().out
    assert f"would purge 1 recording(s) as of {when}" in out and rec.id in out
    assert "would destroy the private key of epoch(s):" in out and rec.key_epoch in out


def test_a_real_pass_as_of_another_date_is_refused_unless_an_admin_forces_it(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = encrypted(rig)
    when = after_expiry(rec).isoformat()
    capsys.readouterr()
    before = snapshot(rig)
    assert run(config_file, "retention", "run", "--as-of", when) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "--dry-run" in err and "--force-as-of" in err
    assert snapshot(rig) == before
    forced = ("retention", "run", "--as-of", when, "--force-as-of")
    assert run(config_file, *forced) == 1
    assert "needs --actor" in capsys.readouterr().err
    assert run(config_file, *forced, "--actor", "dana", "--reason", "policy test") == 1
    assert "dana' is dpo" in capsys.readouterr().err  # a DPO may not: admins only
    assert snapshot(rig)[:2] == before[:2]  # the refusal is audited, nothing else changed
    key = rig.app.keydir.path / f"epoch-{rec.key_epoch}.key"
    assert key.exists()
    assert run(config_file, *forced, "--actor", "ada", "--reason", "proving policy v2") == 0
    assert f"purged 1 recording(s) as of {when}" in capsys.readouterr().out
    with rig.app.db.read() as s:
        row = s.get(Recording, rec.id)
        assert row is not None and (row.state, row.purge_reason) == ("purged", "retention")
        entries = {e.action: e for e in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))}
    forced_row = entries["retention.forced_as_of"]
    forced_details = json.loads(forced_row.details)
    assert (forced_row.actor, forced_details["reason"]) == ("ada", "proving policy v2")
    assert forced_details["as_of"] == when
    assert json.loads(entries["recording.purged"].details)["as_of"] == when
    assert entries["recording.purged"].seq > forced_row.seq  # the cause comes first
    assert "key_epoch.destroyed" in entries and not key.exists()  # crypto-shredded
    assert run(config_file, "audit", "verify") == 0  # the chain is whole


def test_as_of_must_be_a_date(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(config_file, "retention", "run", "--dry-run", "--as-of", "next tuesday")
    assert exc.value.code == 2
    assert "not an ISO 8601 date" in capsys.readouterr().err
