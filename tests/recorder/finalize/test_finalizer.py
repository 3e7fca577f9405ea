"""The finalizer on a real store and real files: encrypt, destroy, repair, reconcile, refuse."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import diskfull
import pytest
import sqlalchemy as sa
from recstore import Rig, files_in, make_rig, write_wav

from callconsent.app import App
from recorder.finalize.finalizer import Finalizer, FinalizerError, FinalizerSettings, Outcome
from recorder.store import outage
from recorder.store.models import AuditEntry, Recording
from recorder.vault import directory as vault_mod
from recorder.vault import fileformat as ff
from recorder.vault.directory import MARKER
from recorder.vault.expiry import RetentionRule, epoch_id


@pytest.fixture
def rig(app: App) -> Rig:
    return make_rig(app)


def row(app: App, rid: str) -> Recording:
    with app.db.read() as s:
        rec = s.get(Recording, rid)
        assert rec is not None
        return rec


def actions(app: App, rid: str) -> list[str]:
    with app.db.read() as s:
        return list(
            s.scalars(
                sa.select(AuditEntry.action)
                .where(AuditEntry.subject_id == rid)
                .order_by(AuditEntry.seq)
            )
        )


def decrypt(rig: Rig, rid: str, out: Path) -> bytes:
    rec = row(rig.app, rid)
    vault_mod.decrypt_to(Path(rec.ciphertext_path), rid, rig.keys.private_key, out)
    return out.read_bytes()


@pytest.mark.parametrize(("rate", "channels", "seconds"), [(8000, 1, 3.0), (48000, 2, 1.5)])
def test_a_closed_wav_is_encrypted_registered_and_removed(
    rig: Rig, tmp_path: Path, rate: int, channels: int, seconds: float
) -> None:
    rid, path = rig.new_recording(channels=channels, rate=rate)
    original = write_wav(path, seconds, rate, channels)
    assert rig.app.ledger.recording_closed(rid) is True  # the sink finalizes (inline: no pool)
    rec = row(rig.app, rid)
    assert rec.state == "encrypted" and rec.last_error is None
    assert not path.exists()
    assert rec.duration_ms == int(seconds * 1000)
    assert rec.plaintext_size == len(original)
    assert rec.key_epoch == epoch_id(rec.expires_at)
    assert rec.expires_at == rec.started_at + timedelta(days=30)
    assert decrypt(rig, rid, tmp_path / "out.wav") == original
    ct = Path(rec.ciphertext_path)
    assert ct.parent == rig.app.config.vault_dir and ct.stat().st_size == rec.ciphertext_size
    with ct.open("rb") as f:
        assert ff.ciphertext_digest(f, ff.read_header(f)) == (
            rec.ciphertext_size,
            rec.ciphertext_sha256,
        )
    assert actions(rig.app, rid) == ["recording.started", "recording.closed", "recording.encrypted"]


def test_a_headerless_stereo_raw_is_wrapped_with_its_rate_and_channels(
    rig: Rig, tmp_path: Path
) -> None:
    rid, path = rig.new_recording(fmt="raw", channels=2, rate=8000)
    raw = os.urandom(8000 * 4 * 2 + 2)  # 2 s of s16le stereo and a partial frame
    path.write_bytes(raw)
    rig.app.ledger.recording_closed(rid)
    rec = row(rig.app, rid)
    assert (rec.state, rec.duration_ms) == ("encrypted", 2000)
    out = decrypt(rig, rid, tmp_path / "out.wav")
    assert out[:4] == b"RIFF" and out[44:] == raw[: 8000 * 4 * 2]
    assert len(out) == rec.plaintext_size


def _fsyncs(rig: Rig, monkeypatch: pytest.MonkeyPatch, rid: str) -> list[tuple[str, list[str]]]:
    """Every directory fsync the finalizer makes: which directory, and the recording's audit
    actions committed by then."""
    from recorder.finalize import finalizer as finalizer_mod

    seen: list[tuple[str, list[str]]] = []
    dirs = {rig.app.config.vault_dir: "vault", rig.app.spool.path: "spool"}

    def fsync_dir(path: Path) -> None:
        seen.append((dirs.get(Path(path), str(path)), actions(rig.app, rid)))
        real(path)

    real = vault_mod.fsync_dir
    monkeypatch.setattr(vault_mod, "fsync_dir", fsync_dir)
    monkeypatch.setattr(finalizer_mod, "fsync_dir", fsync_dir)
    return seen


def test_what_is_made_durable_before_the_row_says_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encryption: the ciphertext's name is durable before the row says ``encrypted``; the
    plaintext's removal is left to the file system's next journal commit (a power cut brings
    the name back, and reconciliation removes it: test_crash, killed after the commit). A
    discard: the removal is durable before the audit row says the audio is destroyed."""
    rid, path = rig.new_recording()
    write_wav(path, 1)
    seen = _fsyncs(rig, monkeypatch, rid)
    rig.app.ledger.recording_closed(rid)
    assert row(rig.app, rid).state == "encrypted" and not path.exists()
    assert seen == [("vault", ["recording.started", "recording.closed"])]

    gone, gone_path = rig.new_recording(ended=False)
    write_wav(gone_path, 1)
    seen = _fsyncs(rig, monkeypatch, gone)
    rig.app.ledger.discard(gone, "consent_withdrawn")
    assert not gone_path.exists()
    assert seen == [("spool", ["recording.started", "recording.discarded"])]


def test_a_discarded_recording_is_destroyed_unencrypted(rig: Rig) -> None:
    rid, path = rig.new_recording(ended=False)
    write_wav(path, 1)
    rig.app.ledger.discard(rid, "consent_withdrawn")
    rec = row(rig.app, rid)
    assert rec.state == "discarded" and rec.ciphertext_path is None
    assert not path.exists() and not rig.finalizer.vault.path_for(rid).exists()
    assert actions(rig.app, rid)[-2:] == ["recording.discarded", "recording.audio_destroyed"]


def test_discarding_an_encrypted_recording_destroys_the_ciphertext(rig: Rig) -> None:
    rid, path = rig.new_recording()
    write_wav(path, 1)
    rig.app.ledger.recording_closed(rid)
    assert rig.finalizer.vault.path_for(rid).exists()
    rig.app.ledger.discard(rid, "agent_discard", actor="7001")
    assert not rig.finalizer.vault.path_for(rid).exists()


def test_a_header_that_is_not_final_waits_then_is_repaired_once_settled(rig: Rig) -> None:
    rid, path = rig.new_recording(ended=False)
    original = bytearray(write_wav(path, 2))
    original[4:8] = original[40:44] = bytes(4)  # FreeSWITCH: sizes 0 until RECORD_STOP
    path.write_bytes(bytes(original))
    rig.app.ledger.recording_closed(rid)
    assert row(rig.app, rid).state == "closed" and path.exists()  # call not over: wait
    with rig.app.db.write() as s:
        rec = s.get(Recording, rid)
        call_id = rec.call_id
    rig.app.ledger.call_ended(call_id)
    assert rig.finalizer.process(rid) is Outcome.PENDING  # over, but changed just now
    old = time.time() - 60
    os.utime(path, (old, old))
    assert rig.finalizer.process(rid) is Outcome.ENCRYPTED
    rec = row(rig.app, rid)
    assert rec.duration_ms == 2000
    assert actions(rig.app, rid)[-2:] == ["recording.header_repaired", "recording.encrypted"]


def test_reconcile_adopts_a_file_the_pbx_closed_while_we_did_not_hear(rig: Rig) -> None:
    rid, path = rig.new_recording(ended=True)
    write_wav(path, 1)  # final header, but no close event reached us
    still, still_path = rig.new_recording(ended=False)  # the PBX still writes this one
    write_wav(still_path, 1)
    rig.finalizer.reconcile(full=True)
    assert row(rig.app, rid).state == "encrypted" and not path.exists()
    assert row(rig.app, still).state == "recording" and still_path.exists()


def test_no_key_epoch_keeps_the_recording_pending_and_alarms(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(app, retention=RetentionRule(default_days=200, max_days=365), weeks=4)
    rid, path = rig.new_recording()
    original = write_wav(path, 1)
    with caplog.at_level(logging.WARNING):
        rig.app.ledger.recording_closed(rid)
        rig.finalizer.check_runway()
    rec = row(rig.app, rid)
    assert rec.state == "closed" and "no key epoch" in rec.last_error
    assert path.read_bytes() == original
    assert files_in(rig.app.config.vault_dir) == [MARKER]
    events = {r.getMessage() for r in caplog.records}
    assert {"recording_pending_no_key_epoch", "key_epochs_running_low"} <= events


class FullDisk:
    """A writer that fills up after ``room`` bytes, like a full vault file system."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return os.write(fd, data)


def test_disk_full_leaves_plaintext_and_store_untouched(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(app, write=FullDisk(room=300_000))
    rid, path = rig.new_recording()
    original = write_wav(path, 30)
    rig.app.ledger.recording_closed(rid)
    before = (row(rig.app, rid).__dict__.copy(), actions(rig.app, rid))
    with caplog.at_level(logging.ERROR):
        assert rig.finalizer.process(rid) is Outcome.FAILED
    after = (row(rig.app, rid).__dict__.copy(), actions(rig.app, rid))
    before[0].pop("_sa_instance_state"), after[0].pop("_sa_instance_state")
    assert before == after and after[0]["state"] == "closed"
    assert path.read_bytes() == original
    assert files_in(rig.app.config.vault_dir) == [MARKER]  # no temp file left
    failed = [r for r in caplog.records if r.getMessage() == "finalize_failed"]
    assert failed and "disk full" in failed[0].kv["error"]


def test_a_symlink_in_the_spool_is_refused(rig: Rig, tmp_path: Path) -> None:
    rid, path = rig.new_recording()
    target = tmp_path / "elsewhere.wav"
    original = write_wav(target, 1)
    path.symlink_to(target)
    rig.app.ledger.recording_closed(rid)
    rec = row(rig.app, rid)
    assert rec.state == "closed" and rec.last_error
    assert target.read_bytes() == original and path.is_symlink()


def test_temp_files_are_removed_unless_a_writer_holds_them(rig: Rig) -> None:
    import fcntl

    vault = rig.app.config.vault_dir
    temp = vault / vault_mod.TEMP_DIR
    stale = temp / ".0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d11.dead.tmp"
    stale.write_bytes(b"x")
    live = temp / ".0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d12.live.tmp"
    live.write_bytes(b"x")
    # where versions before the temp directory wrote: looked at by the start-up pass only
    older = vault / ".0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d13.dead.tmp"
    older.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rig.finalizer.reconcile()
        assert not stale.exists() and live.exists() and older.exists()
        rig.finalizer.reconcile(full=True)
        assert not older.exists() and live.exists()
    finally:
        os.close(fd)


def test_a_periodic_reconcile_never_lists_the_vault(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vault holds every recording kept (millions, in time); a pass every minute that
    listed it cost time and transient memory in proportion (the daemon's RSS crept up with
    the recordings kept). Only the start-up pass looks at the whole vault."""
    rid, path = rig.new_recording()
    write_wav(path, 1)
    rig.app.ledger.recording_closed(rid)
    assert row(rig.app, rid).state == "encrypted"
    listed: list[Path] = []
    real = os.scandir

    def scandir(where: object = ".") -> object:
        listed.append(Path(os.fsdecode(where)).absolute())  # type: ignore[arg-type]
        return real(where)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    rig.finalizer.reconcile()
    vault = rig.app.config.vault_dir.absolute()
    assert vault / vault_mod.TEMP_DIR in listed and rig.finalizer.spool.path.absolute() in listed
    assert vault not in listed
    rig.finalizer.reconcile(full=True)
    # the start-up pass: once, for its recordings and the temp files of older versions both
    # (each listing of millions of files costs seconds at start-up, before calls are taken)
    assert listed.count(vault) == 1


def test_reconcile_passes_with_any_spool_size_reuse_a_few_statements(rig: Rig) -> None:
    """Each list length of an ``IN (...)`` is its own SQL text, which SQLite's driver
    prepares and keeps (128 per connection): a pass every minute with whatever number of
    spool files there were kept a new statement each time, and the daemon's RSS crept up
    minute after minute (docs/reliability.md). Padded lists leave a handful of texts."""
    import uuid

    texts: set[str] = set()

    def seen(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if "IN (" in statement:
            texts.add(statement)

    sa.event.listen(rig.app.db.engine, "before_cursor_execute", seen)
    try:
        spool = rig.finalizer.spool.path
        for n in [*range(1, 40), 600]:
            for p in spool.glob("*.wav"):
                p.unlink()
            for _ in range(n):
                (spool / f"{uuid.uuid4()}.wav").touch()
            rig.finalizer.reconcile()
    finally:
        sa.event.remove(rig.app.db.engine, "before_cursor_execute", seen)
    assert texts and len(texts) <= 10, sorted(t.count("?") for t in texts)  # 1, 2, 4 … 512


def test_the_finalizer_refuses_to_run_as_root(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    f = rig.finalizer
    with pytest.raises(FinalizerError, match="refuses to run as root"):
        Finalizer(rig.app.ledger, f.spool, f.vault, f.keys, f.retention)


def test_as_a_component_it_encrypts_in_worker_threads(rig: Rig) -> None:
    seen: list[str] = []
    rig.finalizer._step = lambda name: seen.append(threading.current_thread().name)

    async def scenario() -> None:
        await rig.finalizer.start()
        try:
            rids = []
            for _ in range(6):
                rid, path = rig.new_recording()
                write_wav(path, 1)
                rids.append(rid)
                await asyncio.to_thread(rig.app.ledger.recording_closed, rid)
            for _ in range(200):
                if all(row(rig.app, r).state == "encrypted" for r in rids):
                    break
                await asyncio.sleep(0.02)
        finally:
            await rig.finalizer.stop()
        assert all(row(rig.app, r).state == "encrypted" for r in rids)

    asyncio.run(scenario())
    assert seen and all(name.startswith("finalizer") for name in seen)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, where mounting is allowed (root with CAP_SYS_ADMIN); else skip."""
    with diskfull.tmpfs(tmp_path / "tiny", "256k") as mnt:
        yield mnt


def test_a_really_full_file_system_leaves_everything_pending(rig: Rig, tiny_tmpfs: Path) -> None:
    rig.finalizer.vault = vault_mod.Vault(tiny_tmpfs)
    rid, path = rig.new_recording()
    original = write_wav(path, 30)  # 480 kB into 256 KiB
    rig.app.ledger.recording_closed(rid)
    rec = row(rig.app, rid)
    assert rec.state == "closed" and rec.last_error is None
    assert path.read_bytes() == original and files_in(tiny_tmpfs) == []
    assert actions(rig.app, rid) == ["recording.started", "recording.closed"]


def test_the_daemon_starts_the_finalizer_first_as_the_ledgers_sink(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callconsent import daemon

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as the daemon's account
    components = daemon.build_components(app)
    assert components[0].name == "finalizer" and app.ledger.sink is components[0]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(FinalizerError):
        daemon.build_components(app)


def test_the_runway_warning_is_repeated_at_most_hourly(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.finalizer.settings = FinalizerSettings(runway_warning_weeks=52)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            rig.finalizer.check_runway()
    warned = [r for r in caplog.records if r.getMessage() == "key_epochs_running_low"]
    assert len(warned) == 1 and rig.finalizer.stats["epoch_runway_days"] < 52 * 7


def test_a_discard_during_encryption_wins_over_the_commit(rig: Rig) -> None:
    rid, path = rig.new_recording()
    write_wav(path, 10)

    def discard_at(name: str) -> None:
        if name == "renamed":  # ciphertext in place, commit not yet made
            rig.finalizer._step = lambda _n: None
            rig.app.ledger.discard(rid, "consent_withdrawn")

    rig.finalizer._step = discard_at
    rig.app.ledger.recording_closed(rid)
    rec = row(rig.app, rid)
    assert rec.state == "discarded" and rec.ciphertext_path is None
    assert not path.exists() and not rig.finalizer.vault.path_for(rid).exists()
    assert "recording.encrypted" not in actions(rig.app, rid)


def test_the_periodic_reconciliation_says_a_store_outage_once_without_a_traceback(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Found on the real Asterisk with PostgreSQL stopped: each pass of the reconciliation
    logged ``reconcile_failed`` with a traceback at error level. The store being away is the
    outage the calls already report once (``store_unavailable``); a real bug still says
    ``reconcile_failed`` with its traceback."""
    from sqlalchemy.exc import OperationalError

    from recorder.store import outage

    rig = make_rig(app, settings=FinalizerSettings(reconcile_interval_s=0.02))
    failures = [OperationalError("SELECT 1", {}, Exception("connection refused"))] * 5
    failures.append(ValueError("a bug"))

    def reconcile(*, full: bool = False) -> None:
        raise failures.pop(0) if failures else RuntimeError("done")

    rig.finalizer.reconcile = reconcile  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(rig.finalizer._reconcile_periodically())
        for _ in range(200):
            if not failures:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        task.cancel()

    with caplog.at_level(logging.DEBUG):
        try:
            asyncio.run(scenario())
        finally:
            outage.OUTAGE.clear()
    said = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    errors = [s for s in said if s[0] == "ERROR"]
    assert errors[0] == ("ERROR", "store_unavailable", False), said
    assert [m for _, m, _ in errors].count("store_unavailable") == 1
    assert ("ERROR", "reconcile_failed", True) in errors  # the bug keeps its traceback
    assert [s for s in said if s[1] == "store_unavailable_again"][:4] == [
        ("DEBUG", "store_unavailable_again", False)
    ] * 4


def test_the_start_up_pass_runs_in_the_background_and_stays_full_until_it_succeeds(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up pass reads every recording kept in the vault (seconds for hundreds of
    thousands): ``start`` returns before it ends, so the daemon takes calls meanwhile. A pass
    that failed (the store away at start-up) leaves the next one full, so the vault is looked
    at once the store is back; after that, the passes leave the vault alone."""
    from sqlalchemy.exc import OperationalError

    rig = make_rig(app, settings=FinalizerSettings(reconcile_interval_s=0.02))
    release = threading.Event()
    passes: list[bool] = []
    failures = [OperationalError("SELECT 1", {}, Exception("connection refused"))] * 2

    def reconcile(*, full: bool = False) -> dict[str, int]:
        passes.append(full)
        release.wait(10)  # the start-up pass is long
        if failures:
            raise failures.pop(0)
        return {"queued": 3}

    rig.finalizer.reconcile = reconcile  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.wait_for(rig.finalizer.start(), 2)  # not held up by the pass
        try:
            assert passes == [True] and not release.is_set()
            release.set()
            await asyncio.wait_for(rig.finalizer.started_up.wait(), 5)
            assert passes == [True, True, True]  # set by the pass that succeeded
            for _ in range(200):
                if len(passes) >= 5:
                    break
                await asyncio.sleep(0.02)
        finally:
            await rig.finalizer.stop()

    with caplog.at_level(logging.INFO):
        try:
            asyncio.run(scenario())
        finally:
            outage.OUTAGE.clear()
    assert passes[:5] == [True, True, True, False, False], passes
    done = [r for r in caplog.records if r.getMessage() == "startup_reconcile_done"]
    assert len(done) == 1 and done[0].kv["queued"] == 3  # type: ignore[attr-defined]


def test_a_pass_still_running_at_shutdown_queues_nothing_and_does_nothing_itself(
    rig: Rig,
) -> None:
    """A stopped queue drops what a late pass hands it (it stays ``closed`` in the store for
    the next start); it never finalizes in the pass's thread while the daemon shuts down."""
    rid, path = rig.new_recording()
    write_wav(path, 1)

    async def scenario() -> None:
        await rig.finalizer.start()
        await rig.finalizer.stop()

    asyncio.run(scenario())
    rig.app.ledger.sink = None  # the close is recorded; nobody is told
    rig.app.ledger.recording_closed(rid)
    rig.finalizer.submit(rid)  # a pass that was still running hands it over
    assert row(rig.app, rid).state == "closed" and path.exists()
