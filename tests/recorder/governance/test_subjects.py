"""Data-subject requests: export everything of a number; erase it (held recordings kept)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from recstore import Rig, make_rig, write_wav

import consent_ivr as c
from callconsent.app import App
from recorder.governance.custody import Custody
from recorder.governance.subjects import SubjectError, Subjects
from recorder.store.models import AuditEntry, Call, Recording

NUMBER = "+49 151 12345678"


@pytest.fixture
def rig(app: App) -> Rig:
    return make_rig(app)


def subjects(rig: Rig) -> Subjects:
    custody = Custody(rig.app.db, rig.app.audit_ctx, rig.keys.store, rig.app.ledger)
    return Subjects(rig.app.db, rig.app.numbers, rig.app.audit_ctx, custody)


def call_with_recording(rig: Rig, number: str, seconds: float = 0.4) -> tuple[str, str, bytes]:
    ledger = rig.app.ledger
    ref = ledger.open_call(
        pbx="asterisk", pbx_call_id=str(uuid.uuid4())[:20], campaign="sales", number=number
    )
    machine = c.ConsentCall(c.Policy())
    machine.handle(c.CallAnswered())
    evidence = next(
        a for a in machine.handle(c.DigitReceived("1")) if isinstance(a, c.LogConsent)
    ).evidence
    ledger.log_consent(ref.id, evidence, prompt_digests={"consent": "ab" * 32})
    rid = str(uuid.uuid4())
    path = rig.app.spool.path_for(rid)
    ledger.recording_started(ref.id, rid, spool_path=str(path))
    audio = write_wav(path, seconds)
    ledger.call_ended(ref.id)
    assert ledger.recording_closed(rid)
    return ref.id, rid, audio


def test_export_gives_every_call_decision_and_decrypted_recording(rig: Rig, tmp_path: Path) -> None:
    call_a, rid_a, audio_a = call_with_recording(rig, NUMBER)
    call_b, rid_b, audio_b = call_with_recording(
        rig, "0151 12345678"
    )  # same number, other notation
    call_with_recording(rig, "+49 30 1234567")  # someone else
    out = tmp_path / "export"
    manifest = subjects(rig).export(
        "0049 151 1234 5678", out, rig.keys, actor="dana", reason="request 2026-11-17"
    )
    assert manifest["subject"] == {"phone_number": "+4915112345678"}
    assert [c["call_id"] for c in manifest["calls"]] == [call_a, call_b]
    consent = manifest["calls"][0]["consent"][0]
    assert (consent["kind"], consent["status"], consent["prompt_sha256"]) == (
        "decision",
        "granted",
        "ab" * 32,
    )
    assert (out / f"recordings/{rid_a}.wav").read_bytes() == audio_a
    assert (out / f"recordings/{rid_b}.wav").read_bytes() == audio_b
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for f in manifest["files"]:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    with rig.app.db.read() as s:
        row = s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "subject.exported")).one()
    assert json.loads(row.details)["recordings"] == 2 and "12345678" not in row.details
    with pytest.raises(SubjectError, match="not empty"):
        subjects(rig).export(NUMBER, out, rig.keys, actor="dana", reason="again")


def test_erase_deletes_recordings_keeps_held_ones_and_forgets_the_number(rig: Rig) -> None:
    call_a, rid_a, _ = call_with_recording(rig, NUMBER)
    call_b, rid_b, _ = call_with_recording(rig, NUMBER)
    other_call, other_rid, _ = call_with_recording(rig, "+49 30 1234567")
    custody = Custody(rig.app.db, rig.app.audit_ctx, rig.keys.store, rig.app.ledger)
    custody.hold(rid_b, rig.keys, actor="dana", reason="court order 5")
    result = subjects(rig).erase("0151 12345678", actor="dana", reason="request 77")
    assert (result.calls, result.deleted, result.held_kept) == (2, [rid_a], [rid_b])
    with rig.app.db.read() as s:
        rec_a, rec_b = s.get(Recording, rid_a), s.get(Recording, rid_b)
        calls = {cid: s.get(Call, cid) for cid in (call_a, call_b, other_call)}
        erased_row = s.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "subject.erased")
        ).one()
    assert rec_a.state == "purged" and rec_a.purge_reason == "subject_erasure"
    assert not Path(rec_a.ciphertext_path).exists()
    assert rec_b.state == "encrypted" and Path(rec_b.ciphertext_path).exists()
    for cid in (call_a, call_b):
        assert (calls[cid].number_key, calls[cid].number_enc, calls[cid].number_kind) == (
            None,
            None,
            "erased",
        )
    assert calls[other_call].number_key is not None  # nobody else's number is touched
    with rig.app.db.read() as s:
        assert s.get(Recording, other_rid).state == "encrypted"  # nor their recordings
    details = json.loads(erased_row.details)
    assert details == {
        "reason": "request 77",
        "calls": 2,
        "recordings_deleted": 1,
        "held_kept": [rid_b],
    }
    assert subjects(rig).calls_of(NUMBER) == []


def test_cli_refuses_an_agent_and_audits_the_refusal(
    rig: Rig, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callconsent import cli

    config_file.write_text(config_file.read_text() + '\n[actors]\nbob = "agent"\n')
    code = cli.main(
        [
            "--config",
            str(config_file),
            "subject",
            "erase",
            "--number",
            NUMBER,
            "--actor",
            "bob",
            "--reason",
            "x",
        ]
    )
    assert code == 1
    assert "actor 'bob' is agent" in capsys.readouterr().err
    with rig.app.db.read() as s:
        refused = s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "authz.refused")).one()
    assert refused.actor == "bob" and "12345678" not in refused.details


def test_erase_leaves_another_hosts_recordings_to_that_host_and_keeps_the_number_till_then(
    rig: Rig,
) -> None:
    """Without shared storage a recording's file is in its own host's vault: "not found" here
    proves nothing, so it is not marked purged. The number stays (else what is left could
    no longer be found or erased) until the erase runs on that host too."""
    here_call, here_rid, _ = call_with_recording(rig, NUMBER)
    there_call, there_rid, _ = call_with_recording(rig, NUMBER)
    with rig.app.db.write() as s:
        s.get(Call, there_call).node = "pbx-b"
    first = subjects(rig).erase(NUMBER, actor="dana", reason="request 78")
    assert (first.deleted, first.elsewhere, first.complete) == (
        [here_rid],
        {there_rid: "pbx-b"},
        False,
    )
    with rig.app.db.read() as s:
        assert s.get(Recording, there_rid).state == "encrypted"
        assert Path(s.get(Recording, there_rid).ciphertext_path).exists()
    assert {c.id for c in subjects(rig).calls_of(NUMBER)} == {here_call, there_call}

    on_b = Custody(
        rig.app.db, rig.app.audit_ctx, rig.keys.store, rig.app.ledger, node="pbx-b"
    )  # the same command run on host B
    second = Subjects(rig.app.db, rig.app.numbers, rig.app.audit_ctx, on_b).erase(
        NUMBER, actor="dana", reason="request 78"
    )
    assert (second.deleted, second.complete) == ([there_rid], True)
    assert subjects(rig).calls_of(NUMBER) == []


def test_export_lists_a_recording_it_cannot_decrypt_and_gives_the_rest(
    rig: Rig, tmp_path: Path
) -> None:
    """One recording whose file is gone (another host's vault, a failed purge after its key
    was destroyed) must not cost the subject the others: it is listed with the reason."""
    _, lost, _ = call_with_recording(rig, NUMBER)
    _, kept, audio = call_with_recording(rig, NUMBER)
    with rig.app.db.read() as s:
        Path(s.get(Recording, lost).ciphertext_path).unlink()
    out = tmp_path / "export"
    manifest = subjects(rig).export(NUMBER, out, rig.keys, actor="dana", reason="request 3")
    recs = {r["id"]: r for c in manifest["calls"] for r in c["recordings"]}
    assert "unreadable" in recs[lost] and "file" not in recs[lost]
    assert (out / f"recordings/{kept}.wav").read_bytes() == audio
    assert not (out / f"recordings/{lost}.wav").exists()
    with rig.app.db.read() as s:
        row = s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "subject.exported")).one()
    assert json.loads(row.details)["unreadable"] == [lost]
