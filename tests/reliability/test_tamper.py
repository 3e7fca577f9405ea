"""Tamper-evidence of the evidence: a consent evidence row, a recording (its hashes, expiry,
hold, discard and purge state) or a call's consent status edited, deleted or inserted behind
the daemon's back is named by ``audit verify`` (table, id, what differs), on SQLite and on a
real PostgreSQL; every legitimate life cycle still verifies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from recstore import Rig, make_rig, write_wav

import consent_ivr as c
from callconsent import cli
from callconsent import config as config_mod
from callconsent.app import App
from consent_ivr.status import ConsentStatus
from recorder.governance.custody import Custody
from recorder.governance.retention import Retention
from recorder.store import audit, migrate
from recorder.store.db import Database
from recorder.store.models import Call, ConsentRecord, Recording
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import KeyStore

LATER = datetime.now(UTC) + timedelta(days=45)  # a 30-day recording made now has expired


@dataclass
class Stored:
    """Ids of rows written by every legitimate path, one of each kind."""

    granted: str  # evidence: a decision "granted"
    declined: str  # evidence: a decision "declined"
    declined_call: str
    withdrawn: str  # evidence: a change "withdrawn"
    encrypted: str  # recording: started, closed, encrypted
    held: str  # recording: encrypted, held
    released: str  # recording: encrypted, held, released
    discarded: str  # recording: started, discarded
    deleted: str  # recording: encrypted, deleted by a DPO (purged)
    purged: str  # recording: encrypted, purged by retention
    recomputed: str  # recording: encrypted, expiry recomputed
    recording_call: str


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[App]:
    path = tmp_path / "callconsent.toml"
    path.write_text(
        f'[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n\n[database]\nurl = "{db_url}"\n\n'
        '[numbers]\ndefault_region = "DE"\n'
    )
    migrate.upgrade(Database(db_url))  # what `callconsent db upgrade` does on PostgreSQL
    application = App.open(config_mod.load(path))
    application.config_path = path  # type: ignore[attr-defined]
    yield application
    application.close()


def decide(rig: Rig, digit: str) -> tuple[str, str]:
    """A call decided by the consent machine; returns (call id, evidence id)."""
    call = rig.app.ledger.open_call(
        pbx="asterisk",
        pbx_call_id=str(uuid.uuid4())[:20],
        campaign="sales",
        number="+4915112345678",
    )
    machine = c.ConsentCall(c.Policy())
    machine.handle(c.CallAnswered())
    evidence = next(
        a for a in machine.handle(c.DigitReceived(digit)) if isinstance(a, c.LogConsent)
    ).evidence
    rig.app.ledger.log_consent(
        call.id, evidence, prompt_digests={"consent-question": "ab" * 32}, pbx_channel_id="PJSIP/x"
    )
    return call.id, evidence.consent_id


def encrypted(rig: Rig) -> str:
    rid, path = rig.new_recording()
    write_wav(path, 0.2)
    assert rig.app.ledger.recording_closed(rid)
    return rid


@pytest.fixture
def stored(app: App) -> tuple[Rig, Stored]:
    rig = make_rig(app)
    call, granted = decide(rig, "1")
    declined_call, declined = decide(rig, "2")
    withdrawn = app.ledger.log_status_change(
        call, ConsentStatus.WITHDRAWN, "caller_pressed_withdraw", datetime.now(UTC)
    )
    custody = Custody(app.db, app.audit_ctx, rig.keys.store, app.ledger)
    names = ("encrypted", "held", "released", "deleted", "recomputed")
    ids = {name: encrypted(rig) for name in names}
    custody.hold(ids["held"], rig.keys, actor="dana", reason="case 42")
    custody.hold(ids["released"], rig.keys, actor="dana", reason="case 43")
    custody.unhold(ids["released"], actor="dana", reason="closed")
    custody.delete(ids["deleted"], actor="dpo", reason="request 7")
    discarded, _ = rig.new_recording()
    app.ledger.discard(discarded, "consent_withdrawn")
    keys = KeyStore(app.keydir, app.db, app.audit_ctx)
    # 60 days for what is encrypted so far: only the recording made after expires by LATER
    Retention(app.db, app.audit_ctx, keys, node="pbx-test").recompute(
        RetentionRule(categories={"sales": 60}), lambda campaign: "sales", actor="dpo",
        reason="policy v2",
    )  # fmt: skip
    ids["purged"] = encrypted(rig)
    purge = Retention(app.db, app.audit_ctx, keys, node="pbx-test", clock=lambda: LATER)
    assert purge.run(shred=False).purged == [ids["purged"]]
    with app.db.read() as s:
        recording_call = s.get(Recording, ids["encrypted"]).call_id
    return rig, Stored(
        granted=granted,
        declined=declined,
        declined_call=declined_call,
        withdrawn=withdrawn,
        discarded=discarded,
        recording_call=recording_call,
        **ids,
    )


def verify(app: App) -> audit.AuditReport:
    with app.db.read() as s:
        return audit.verify(s)


def named(app: App) -> list[str]:
    report = verify(app)
    assert report.problems == [], "the chain itself was not touched"
    return [str(p) for p in report.content]


def change(app: App, model: Any, row_id: str, **values: Any) -> None:
    with app.db.write() as s:
        s.execute(sa.update(model).where(model.id == row_id).values(**values))


def test_every_legitimate_life_cycle_verifies(stored: tuple[Rig, Stored]) -> None:
    rig, ids = stored
    report = verify(rig.app)
    assert report.ok, report.content
    with rig.app.db.read() as s:
        rows = s.scalar(sa.select(sa.func.count()).select_from(ConsentRecord))
        rows += s.scalar(sa.select(sa.func.count()).select_from(Recording))
        states = {r.id: r.state for r in s.scalars(sa.select(Recording))}
    assert report.sealed_rows == rows and report.unsealed_rows == 0
    assert states[ids.purged] == states[ids.deleted] == "purged"
    assert states[ids.discarded] == "discarded" and states[ids.held] == "encrypted"


EDITS = [
    ("consent_evidence", "declined", {"status": "granted"}, "status"),
    ("consent_evidence", "granted", {"decided_at": datetime(2026, 1, 1, tzinfo=UTC)}, "decided_at"),
    ("consent_evidence", "granted", {"digits": []}, "digits"),
    ("consent_evidence", "withdrawn", {"status": "granted"}, "status"),
    ("consent_evidence", "granted", {"legal_basis": "legitimate_interest"}, "legal_basis"),
    ("recordings", "encrypted", {"ciphertext_sha256": "0" * 64}, "ciphertext_sha256"),
    ("recordings", "encrypted", {"plaintext_sha256": "1" * 64}, "plaintext_sha256"),
    ("recordings", "encrypted", {"expires_at": LATER + timedelta(days=3650)}, "expires_at"),
    ("recordings", "held", {"legal_hold": False}, "legal_hold"),
    ("recordings", "released", {"legal_hold": True}, "legal_hold"),
    ("recordings", "held", {"hold_key": "other"}, "hold_key"),
    ("recordings", "discarded", {"state": "closed"}, "state"),
    ("recordings", "discarded", {"discard_reason": "x"}, "discard_reason"),
    ("recordings", "deleted", {"state": "encrypted"}, "state"),
    ("recordings", "purged", {"state": "encrypted"}, "state"),
    ("recordings", "purged", {"purged_at": LATER + timedelta(days=1)}, "purged_at"),
    ("recordings", "purged", {"ciphertext_sha256": "2" * 64}, "ciphertext_sha256"),
    ("recordings", "recomputed", {"retention_category": "default"}, "retention_category"),
]


@pytest.mark.parametrize(("table", "which", "values", "column"), EDITS)
def test_an_edited_row_is_named_with_its_column(
    stored: tuple[Rig, Stored], table: str, which: str, values: dict[str, Any], column: str
) -> None:
    rig, ids = stored
    row_id = getattr(ids, which)
    change(rig.app, ConsentRecord if table == "consent_evidence" else Recording, row_id, **values)
    problems = named(rig.app)
    ours = [p for p in problems if p.startswith(f"{table} {row_id}: edited")]
    assert len(ours) == 1 and column in ours[0], problems
    others = [p for p in problems if p not in ours and not p.startswith("calls ")]
    assert others == [], "nothing else is named"


def test_a_call_status_changed_behind_the_log_is_named(stored: tuple[Rig, Stored]) -> None:
    rig, ids = stored
    change(rig.app, Call, ids.declined_call, consent_status="granted")
    assert named(rig.app) == [
        f"calls {ids.declined_call}: edited: consent_status is 'granted', audit row "
        f"{seq_of(rig.app, 'consent.decision', ids.declined_call)} set 'declined'"
    ]


def seq_of(app: App, action: str, subject: str) -> int:
    with app.db.read() as s:
        return s.scalar(
            sa.select(sa.func.max(audit.AuditEntry.seq)).where(
                audit.AuditEntry.action == action, audit.AuditEntry.subject_id == subject
            )
        )


def test_nineteen_declines_turned_into_grants_are_each_named(app: App) -> None:
    """The issue's case: ``consent_evidence.status`` declined -> granted on 19 rows (and the
    call rows with them, as a careful forger would) went unnoticed; now each one is named."""
    rig = make_rig(app)
    decided = [decide(rig, "2") for _ in range(19)] + [decide(rig, "1") for _ in range(3)]
    with app.db.write() as s:
        s.execute(
            sa.update(ConsentRecord)
            .where(ConsentRecord.status == "declined")
            .values(status="granted")
        )
        was_declined = Call.consent_status == "declined"
        s.execute(sa.update(Call).where(was_declined).values(consent_status="granted"))
    problems = named(app)
    evidence = sorted(
        p.split()[1].rstrip(":") for p in problems if p.startswith("consent_evidence")
    )
    assert evidence == sorted(e for _, e in decided[:19])
    assert all("edited: status differ" in p for p in problems if p.startswith("consent_"))
    assert sorted(p.split()[1].rstrip(":") for p in problems if p.startswith("calls ")) == sorted(
        call for call, _ in decided[:19]
    )


@pytest.mark.parametrize("which", ["granted", "withdrawn", "encrypted", "purged", "discarded"])
def test_a_deleted_row_is_named(stored: tuple[Rig, Stored], which: str) -> None:
    rig, ids = stored
    row_id = getattr(ids, which)
    model = ConsentRecord if which in ("granted", "withdrawn") else Recording
    with rig.app.db.write() as s:
        s.execute(sa.delete(model).where(model.id == row_id))
    problems = [p for p in named(rig.app) if not p.startswith("calls ")]
    assert len(problems) == 1 and problems[0].startswith(
        f"{model.__tablename__} {row_id}: deleted (audit row "
    ), problems


def test_inserted_rows_are_named(stored: tuple[Rig, Stored]) -> None:
    rig, ids = stored
    forged_evidence, forged_recording = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    with rig.app.db.write() as s:
        s.add(
            ConsentRecord(
                id=forged_evidence, call_id=ids.declined_call, kind="change", status="granted",
                method="agent", legal_basis="consent", decided_at=now,
            )
        )  # fmt: skip
        s.add(
            Recording(
                id=forged_recording, call_id=ids.recording_call, state="encrypted",
                spool_path="/x", format="wav", started_at=now, ciphertext_sha256="3" * 64,
            )
        )  # fmt: skip
    assert sorted(named(rig.app)) == sorted(
        [
            f"consent_evidence {forged_evidence}: inserted without an audit row recording it",
            f"recordings {forged_recording}: inserted without an audit row recording it",
        ]
    )


def test_the_cli_names_the_edit_and_fails(
    stored: tuple[Rig, Stored], capsys: pytest.CaptureFixture[str]
) -> None:
    rig, ids = stored
    config = str(rig.app.config_path)  # type: ignore[attr-defined]
    assert cli.main(["--config", config, "audit", "verify"]) == 0
    assert "0 tampered" not in capsys.readouterr().out
    change(rig.app, ConsentRecord, ids.declined, status="granted")
    assert cli.main(["--config", config, "audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"consent_evidence {ids.declined}: edited: status differ" in out
    assert "chain intact" in out and "1 tampered" in out
