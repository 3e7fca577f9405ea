"""Retention: purge, crypto-shredding, legal hold, DPO deletion, recompute."""

from __future__ import annotations

import multiprocessing
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from recstore import Rig, make_rig, write_wav

from callconsent.app import App
from recorder.governance.custody import Custody, CustodyError
from recorder.governance.retention import Retention
from recorder.store import audit
from recorder.store.db import Database
from recorder.store.ledger import Ledger
from recorder.store.models import AuditEntry, Call, KeyEpoch, Recording
from recorder.store.numbers import NumberProtector
from recorder.vault import directory as vault
from recorder.vault import envelope
from recorder.vault.directory import MARKER
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import KeyStore, KeyStoreError

LATER = datetime.now(UTC) + timedelta(days=45)  # every 30-day recording made now has expired


@pytest.fixture
def rig(app: App) -> Rig:
    return make_rig(app)


def encrypted(rig: Rig, seconds: float = 0.5) -> str:
    rid, path = rig.new_recording()
    write_wav(path, seconds)
    assert rig.app.ledger.recording_closed(rid)
    assert row(rig.app, rid).state == "encrypted"
    return rid


def row(app: App, rid: str) -> Recording:
    with app.db.read() as s:
        rec = s.get(Recording, rid)
        assert rec is not None
        return rec


def retention(app: App, *, at: datetime = LATER, **kw) -> Retention:
    keys = KeyStore(app.keydir, app.db, app.audit_ctx)
    return Retention(
        app.db, app.audit_ctx, keys, node=app.config.daemon.node, clock=lambda: at, **kw
    )


def audit_actions(app: App, action: str) -> list[str]:
    with app.db.read() as s:
        return list(s.scalars(sa.select(AuditEntry.subject_id).where(AuditEntry.action == action)))


def custody(rig: Rig) -> Custody:
    return Custody(rig.app.db, rig.app.audit_ctx, rig.keys.store, rig.app.ledger)


def test_purge_deletes_expired_keeps_held_and_audits_each(rig: Rig) -> None:
    a, b, held = encrypted(rig), encrypted(rig), encrypted(rig)
    custody(rig).hold(held, rig.keys, actor="dana", reason="case 42")
    early = retention(rig.app, at=datetime.now(UTC)).run()
    assert early.purged == [] and early.held == 0
    dry = retention(rig.app).run(dry_run=True)
    assert sorted(dry.purged) == sorted([a, b]) and dry.held == 1
    assert row(rig.app, a).state == "encrypted" and Path(row(rig.app, a).ciphertext_path).exists()
    report = retention(rig.app).run()
    assert sorted(report.purged) == sorted([a, b]) and report.failed == []
    for rid in (a, b):
        rec = row(rig.app, rid)
        assert (rec.state, rec.purge_reason) == ("purged", "retention")
        assert not Path(rec.ciphertext_path).exists()
    assert sorted(audit_actions(rig.app, "recording.purged")) == sorted([a, b])
    assert row(rig.app, held).state == "encrypted"
    with rig.app.db.read() as s:
        assert audit.verify(s).ok


def test_a_file_that_cannot_be_removed_is_reported_not_skipped(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, fine = encrypted(rig), encrypted(rig)
    stuck_path = row(rig.app, stuck).ciphertext_path
    real_unlink = __import__("os").unlink

    def unlink(path, *a, **kw):  # type: ignore[no-untyped-def]
        if str(path) == stuck_path:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr("recorder.governance.retention.os.unlink", unlink)
    report = retention(rig.app).run(shred=False)
    assert report.purged == [fine]
    assert report.failed == [(stuck, f"Permission denied ({stuck_path})")]
    assert row(rig.app, stuck).state == "encrypted"  # retried by the next pass
    monkeypatch.undo()
    assert retention(rig.app).run(shred=False).purged == [stuck]


def test_shredding_makes_every_copy_unreadable_but_held_recordings_survive(
    rig: Rig, tmp_path: Path
) -> None:
    gone, held = encrypted(rig), encrypted(rig)
    backup = tmp_path / "backup.ccrec"  # what a backup of the vault holds
    shutil.copy(row(rig.app, gone).ciphertext_path, backup)
    epoch = row(rig.app, gone).key_epoch
    assert row(rig.app, held).key_epoch == epoch
    custody(rig).hold(held, rig.keys, actor="dana", reason="litigation")
    report = retention(rig.app).run()
    assert epoch in report.shredded
    assert not (rig.app.keydir.path / f"epoch-{epoch}.key").exists()
    with rig.app.db.read() as s:
        assert s.get(KeyEpoch, epoch).destroyed_at is not None
        spent = {e.id for e in s.scalars(sa.select(KeyEpoch)) if e.expires_until <= LATER}
    assert set(report.shredded) == spent - {e for e in spent if e.startswith("hold")}
    assert sorted(audit_actions(rig.app, "key_epoch.destroyed")) == sorted(report.shredded)
    with pytest.raises((KeyStoreError, envelope.EnvelopeError)):
        vault.decrypt_to(backup, gone, rig.keys.private_key, tmp_path / "never.wav")
    assert not (tmp_path / "never.wav").exists()
    out = tmp_path / "held.wav"
    rec = row(rig.app, held)
    _, digest = vault.decrypt_to(Path(rec.ciphertext_path), held, rig.keys.private_key, out)
    assert digest == rec.plaintext_sha256


def test_an_epoch_with_a_live_recording_is_kept(rig: Rig) -> None:
    live = encrypted(rig)
    epoch = row(rig.app, live).key_epoch
    at = datetime.now(UTC) + timedelta(days=10)
    report = retention(rig.app, at=at).run()
    assert epoch not in report.shredded
    destroyed = [e for e in rig.keys.store.epochs() if e.destroyed_at]
    assert {e.id for e in destroyed} == set(report.shredded)
    assert all(e.expires_until <= at for e in destroyed)  # only weeks that are over


def test_delete_by_a_dpo_is_refused_while_held(rig: Rig) -> None:
    rid = encrypted(rig)
    c = custody(rig)
    c.hold(rid, rig.keys, actor="dana", reason="case 7")
    with pytest.raises(CustodyError, match="under legal hold"):
        c.delete(rid, actor="dana", reason="request 9")
    assert c.unhold(rid, actor="dana", reason="case closed")
    assert c.delete(rid, actor="dana", reason="request 9") == "purged"
    rec = row(rig.app, rid)
    assert rec.purge_reason == "dpo_delete" and not Path(rec.ciphertext_path).exists()
    assert audit_actions(rig.app, "recording.deleted") == [rid]
    with pytest.raises(CustodyError, match="already gone"):
        c.delete(rid, actor="dana", reason="again")


def test_recompute_reapplies_a_changed_policy_and_audits(rig: Rig) -> None:
    rid = encrypted(rig)
    before = row(rig.app, rid).expires_at
    changed = retention(rig.app).recompute(
        RetentionRule(default_days=30, max_days=365, categories={"sales": 90}),
        lambda campaign: "sales",
        actor="dana",
        reason="policy v2",
    )
    assert changed == [(rid, before, before + timedelta(days=60))]
    assert row(rig.app, rid).retention_category == "sales"
    assert audit_actions(rig.app, "retention.recomputed") == [rid]
    assert (
        retention(rig.app).recompute(
            RetentionRule(categories={"sales": 90}), lambda c: "sales", actor="d", reason="r"
        )
        == []
    )


def _fake_expired(ledger: Ledger, vault_dir: Path, n: int, node_calls: int = 1) -> list[str]:
    ids = []
    (vault_dir / MARKER).touch()  # a vault, as Vault.ensure() leaves it
    call = ledger.open_call(pbx="import", pbx_call_id=str(uuid.uuid4()), campaign="sales")
    past = datetime.now(UTC) - timedelta(days=1)
    with ledger.db.write() as s:
        for _ in range(n):
            rid = str(uuid.uuid4())
            path = vault_dir / f"{rid}.ccrec"
            path.write_bytes(b"x")
            s.add(
                Recording(
                    id=rid,
                    call_id=call.id,
                    state="encrypted",
                    spool_path="-",
                    format="wav",
                    channels=1,
                    started_at=past - timedelta(days=30),
                    ciphertext_path=str(path),
                    expires_at=past,
                    legal_hold=False,
                )
            )
            ids.append(rid)
    return ids


def _purge_process(
    url: str, key_dir: str, node: str, out: multiprocessing.Queue, start: object
) -> None:
    db = Database(url)
    start.wait()  # type: ignore[attr-defined]  # all four begin together
    ctx = audit.AuditContext(node=node, os_user="tester")
    keys = KeyStore(__import__("recorder.vault.keydir").vault.keydir.KeyDir(Path(key_dir)), db, ctx)
    report = Retention(db, ctx, keys, node=node, shared_storage=True, batch=25).run(shred=False)
    out.put((report.purged, report.failed))
    db.dispose()


def test_several_hosts_purge_one_database_at_once(db: Database, tmp_path: Path) -> None:
    """Four purge processes (four "hosts" sharing the vault) race over 300 expired recordings:
    each is purged exactly once, with one audit row, and the chain stays intact."""
    ledger = Ledger(db, NumberProtector(bytes(32)), audit.AuditContext(node="pbx-a", os_user="t"))
    ids = _fake_expired(ledger, tmp_path, 300)
    (tmp_path / "keys").mkdir(mode=0o700)
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(4)
    procs = [
        ctx.Process(
            target=_purge_process, args=(db.url, str(tmp_path / "keys"), f"pbx-{i}", out, start)
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    purged = [rid for done, _ in results for rid in done]
    assert sorted(purged) == sorted(ids), "each recording purged exactly once"
    assert all(failed == [] for _, failed in results)
    assert not list(tmp_path.glob("*.ccrec"))
    with db.read() as s:
        rows = s.scalars(
            sa.select(AuditEntry.subject_id).where(AuditEntry.action == "recording.purged")
        ).all()
        assert sorted(rows) == sorted(ids)
        assert audit.verify(s).ok
        assert (
            s.scalar(
                sa.select(sa.func.count()).select_from(Recording).where(Recording.state != "purged")
            )
            == 0
        )


def test_purge_leaves_other_hosts_files_alone_without_shared_storage(
    app: App, tmp_path: Path
) -> None:
    other = Ledger(app.db, app.numbers, audit.AuditContext(node="pbx-other", os_user="t"))
    ids = _fake_expired(other, tmp_path, 3)
    report = retention(app, at=datetime.now(UTC)).run(shred=False)
    assert report.purged == []
    assert all((tmp_path / f"{rid}.ccrec").exists() for rid in ids)
    with app.db.read() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Call)) == 1


@pytest.mark.parametrize("shared", [False, True], ids=["vault-gone", "share-not-mounted"])
def test_a_vault_that_is_not_there_purges_nothing(app: App, tmp_path: Path, shared: bool) -> None:
    """A file not found counts as deleted only in a vault that is really there: a missing
    directory, or (shared storage) an empty mount point without the vault's marker, fails
    each row loudly instead of marking audio "purged" that still exists elsewhere."""
    vault = tmp_path / "share"
    vault.mkdir()
    ledger = Ledger(
        app.db, app.numbers, audit.AuditContext(node=app.config.daemon.node, os_user="t")
    )
    ids = _fake_expired(ledger, vault, 3)
    if shared:
        (vault / MARKER).unlink()  # what an unmounted share looks like: a bare directory
        for rid in ids:
            (vault / f"{rid}.ccrec").unlink()
    else:
        for p in vault.iterdir():
            p.unlink()
        vault.rmdir()
    report = retention(app, at=datetime.now(UTC), shared_storage=shared).run(shred=False)
    assert report.purged == [] and sorted(r for r, _ in report.failed) == sorted(ids)
    assert all(("missing" if not shared else MARKER) in why for _, why in report.failed)
    with app.db.read() as s:
        states = s.scalars(sa.select(Recording.state).where(Recording.id.in_(ids))).all()
    assert set(states) == {"encrypted"}


def test_the_daemon_runs_the_pass_at_start_and_stops_cleanly(rig: Rig) -> None:
    import asyncio

    from callconsent.retention_pass import RetentionPass

    rid = encrypted(rig)

    async def scenario() -> None:
        component = RetentionPass(retention(rig.app), interval_s=3600)
        await component.start()
        for _ in range(200):
            if row(rig.app, rid).state == "purged":
                break
            await asyncio.sleep(0.02)
        await component.stop()

    asyncio.run(scenario())
    assert row(rig.app, rid).state == "purged"


def test_a_hold_racing_a_purge_reports_the_audio_gone(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host's purge takes the recording while its key is being re-wrapped: the hold
    must not report "held" (nor audit it) for audio that no longer exists."""
    from recorder.governance import custody as custody_mod

    rid = encrypted(rig)
    real_rewrite = custody_mod.ff.rewrite_slots

    def purge_meanwhile(path: Path, slots: object) -> None:
        real_rewrite(path, slots)  # type: ignore[arg-type]
        assert retention(rig.app).run().purged == [rid]

    monkeypatch.setattr(custody_mod.ff, "rewrite_slots", purge_meanwhile)
    with pytest.raises(CustodyError, match="audio is gone"):
        custody(rig).hold(rid, rig.keys, actor="dana", reason="case 9")
    assert row(rig.app, rid).state == "purged" and not row(rig.app, rid).legal_hold
    assert audit_actions(rig.app, "recording.held") == []


def test_many_files_some_stuck_each_failure_lands_on_its_own_row(app: App) -> None:
    """Several batches, each unlinked by many threads at once: a file that cannot go (here a
    directory where the file should be) fails on its own row, wherever it sits, and every
    other row is purged and audited."""
    where = app.config.vault_dir
    where.mkdir(parents=True, exist_ok=True)
    call = app.ledger.open_call(pbx="import", pbx_call_id="many", campaign="default")
    old = datetime.now(UTC) - timedelta(days=40)
    ids = [str(uuid.uuid4()) for _ in range(700)]
    stuck = {rid for i, rid in enumerate(ids) if i % 37 in (0, 36) or i == 699}
    for rid in ids:
        path = where / f"{rid}.ccrec"
        if rid in stuck:
            (path / "inside").mkdir(parents=True)  # a non-empty directory: unlink fails
        else:
            path.write_bytes(b"x")
    with app.db.write() as s:
        s.execute(
            sa.insert(Recording),
            [
                {
                    "id": rid,
                    "call_id": call.id,
                    "state": "encrypted",
                    "spool_path": "-",
                    "format": "wav",
                    "channels": 1,
                    "retention_category": "default",
                    "started_at": old,
                    "expires_at": old + timedelta(seconds=i),
                    "ciphertext_path": str(where / f"{rid}.ccrec"),
                    "legal_hold": False,
                }
                for i, rid in enumerate(ids)
            ],
        )
    report = retention(app, at=datetime.now(UTC), batch=260).run(shred=False)
    assert sorted(report.purged) == sorted(set(ids) - stuck)
    assert {rid: why for rid, why in report.failed} == {
        rid: f"Is a directory ({where / f'{rid}.ccrec'})" for rid in stuck
    }
    for rid in ids:
        assert row(app, rid).state == ("encrypted" if rid in stuck else "purged")
        assert (where / f"{rid}.ccrec").exists() == (rid in stuck)
    assert sorted(audit_actions(app, "recording.purged")) == sorted(set(ids) - stuck)
    with app.db.read() as s:
        assert audit.verify(s).ok


def test_a_shredding_cut_short_after_the_key_went_is_completed_by_the_next_pass(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between deleting the key file and committing: the next pass must
    record the destruction, not report the key as kept on another host."""
    rid = encrypted(rig)
    epoch = row(rig.app, rid).key_epoch
    key_file = rig.app.keydir.path / f"epoch-{epoch}.key"
    real_append = audit.append

    def dies(*a, **kw):  # type: ignore[no-untyped-def]
        if kw.get("action") == "key_epoch.destroyed":
            raise SystemExit("killed")
        return real_append(*a, **kw)

    monkeypatch.setattr("recorder.vault.keystore.audit.append", dies)
    with pytest.raises(SystemExit):
        rig.keys.store.destroy_private(epoch, "retention", "no live recording needs it")
    assert not key_file.exists()
    with rig.app.db.read() as s:
        assert s.get(KeyEpoch, epoch).destroyed_at is None  # rolled back
    monkeypatch.undo()
    report = retention(rig.app).run()
    assert epoch in report.shredded and epoch not in report.shred_elsewhere
    with rig.app.db.read() as s:
        assert s.get(KeyEpoch, epoch).destroyed_at is not None
        assert audit.verify(s).ok
    assert audit_actions(rig.app, "key_epoch.destroyed").count(epoch) == 1
    assert not list(rig.app.keydir.path.glob(".*destroying"))  # the intent is gone too
    again = retention(rig.app).run()
    assert epoch not in again.shredded + again.shred_elsewhere
    # a second destroyer racing the first finds the intent it left: the destruction is
    # recorded once, not twice
    (rig.app.keydir.path / f".epoch-{epoch}.key.destroying").touch()
    assert rig.keys.store.destroy_private(epoch, "retention", "again")
    assert audit_actions(rig.app, "key_epoch.destroyed").count(epoch) == 1
    assert not list(rig.app.keydir.path.glob(".*destroying"))
