"""The finalizer: from a closed spool file to an encrypted, registered recording, with the
plaintext gone — crash-safe at every step.

Steps for one recording (each a point the crash tests kill the process at)::

    open the spool file (O_NOFOLLOW, regular, our name) and lock it; re-read the row
    check the WAV (wavcheck): sizes final, or repaired if the call is over and the file settled
    pick the key epoch of its expiry week; no epoch -> it stays pending, alarmed  [opened]
    encrypt to a temp file in the vault                                           [mid_encrypt]
    fsync the temp file                                                           [encrypted]
    rename, fsync the vault directory                                             [renamed]
    one transaction: state encrypted, sizes, hashes, epoch, expires_at + audit    [committed]
    unlink the plaintext, fsync the spool                                         [unlinked]

A crash anywhere leaves the plaintext with its row still ``closed`` (and perhaps an orphan
ciphertext or temp file, which reconciliation removes), or the committed ciphertext (and
perhaps a plaintext that reconciliation removes). A discarded recording's files are destroyed
without being encrypted. Reconciliation runs at start-up and periodically, so a file the PBX
closed while we were down is still finalized. Encryption runs in worker threads, never on the
event loop; the plaintext's ``flock`` keeps a CLI import and the daemon from finalizing the
same recording twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import bindparam, select, update

from recorder import metrics
from recorder.finalize import reconcile as reconcile_mod
from recorder.finalize import wavcheck
from recorder.finalize.alarms import Alarms
from recorder.finalize.spool import Spool, SpoolError
from recorder.finalize.workqueue import RecordingQueue
from recorder.store import audit, outage, rowseal
from recorder.store.ledger import SYSTEM_ACTOR, Ledger
from recorder.store.models import Call, Recording, RecordingState
from recorder.store.prepared import Prepared, Reading
from recorder.store.writer import Batch
from recorder.vault import envelope
from recorder.vault.directory import Sealed, Step, Vault, fsync_dir, unused_temp
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import Epoch, KeyStore, NoEpoch

log = logging.getLogger("callconsent.finalizer")
S = RecordingState
_CUT = "the spool's file system was full while it was recorded: the end may be missing"
_BLOCK = 1 << 20


_RECORDINGS = Recording.__table__
_CALLS = Call.__table__
# Core reads, built once and run on the DB-API cursor (Database.reading; the ORM's identity
# map and instances, then SQLAlchemy's execution layer, cost more than the reads): the
# recording's row and its call's end, in one statement
_LOOK = Prepared(
    select(_RECORDINGS, _CALLS.c.ended_at.label("call_ended_at"))
    .outerjoin(_CALLS, _CALLS.c.id == _RECORDINGS.c.call_id)
    .where(_RECORDINGS.c.id == bindparam("b_id"))
)
_STATE = Prepared(select(_RECORDINGS.c.state).where(_RECORDINGS.c.id == bindparam("b_id")))
# closed -> encrypted, only if still closed (a discard during encryption wins)
_ENCRYPTED = Prepared(  # run on the writer's cursor (recorder.store.prepared)
    update(_RECORDINGS)
    .where(_RECORDINGS.c.id == bindparam("b_id"), _RECORDINGS.c.state == S.CLOSED.value)
    .values(
        state=S.ENCRYPTED.value,
        last_error=None,
        **{
            name: bindparam(f"b_{name}")
            for name in (
                "duration_ms", "plaintext_size", "plaintext_sha256", "ciphertext_path",
                "ciphertext_size", "ciphertext_sha256", "key_epoch", "expires_at", "encrypted_at",
            )
        },
    )
    .returning(*rowseal.columns("recordings"))  # the row as encrypted: its seal
)  # fmt: skip


class FinalizerError(Exception):
    """The finalizer refuses to run (as root) or cannot."""


class Outcome(enum.StrEnum):
    ENCRYPTED = "encrypted"  # done now or before
    DESTROYED = "destroyed"  # a discarded recording's audio is gone
    PENDING = "pending"  # not final yet, or no key epoch: reconciliation retries
    FAILED = "failed"  # an error (disk full, damaged file): logged, retried later
    BUSY = "busy"  # another worker or process holds the file
    SKIPPED = "skipped"  # nothing to do (unknown id, still recording)
    RECHECK = "recheck"  # the row changed under us: look again


@dataclass(frozen=True, slots=True)
class FinalizerSettings:
    workers: int = 4
    reconcile_interval_s: float = 60.0
    settle_s: float = 30.0  # a file unchanged this long after its call ended gets repaired
    runway_warning_weeks: int = 8
    not_final_retries: tuple[float, ...] = (0.02, 0.1, 0.5)  # PBXs patch headers late
    overdue_after_s: float = 600.0  # plaintext older than this after its end: alarm
    spool_full_bytes: int = 1 << 20  # less free space than this in the spool: "full"
    spool_watch_s: float = 1.0  # how often the spool's free space is looked at


def _no_step(_name: str) -> None:
    pass


class Finalizer:
    name = "finalizer"

    def __init__(
        self,
        ledger: Ledger,
        spool: Spool,
        vault: Vault,
        keys: KeyStore,
        retention: RetentionRule,
        settings: FinalizerSettings | None = None,
        *,
        step: Step = _no_step,
        allow_root: bool = False,  # tests only: the daemon never passes it
    ) -> None:
        if os.geteuid() == 0 and not allow_root:
            raise FinalizerError(
                "the finalizer refuses to run as root: run it as the daemon's account "
                "(`callconsent serve` switches to daemon.user; for the CLI: "
                "sudo -u callconsent callconsent …)"
            )
        self.ledger, self.db, self.ctx = ledger, ledger.db, ledger.ctx
        self.spool, self.vault, self.keys, self.retention = spool, vault, keys, retention
        self.settings = settings or FinalizerSettings()
        self._step = step
        self.queue = RecordingQueue(self.process, log)
        self.alarms = Alarms(spool.path, self.settings.spool_full_bytes)
        self._periodic: asyncio.Task[None] | None = None
        self.started_up = asyncio.Event()  # set once the start-up pass has succeeded
        self._spool_watch: asyncio.Task[None] | None = None
        self.stats: dict[str, float] = dict.fromkeys(
            ("encrypted", "destroyed", "failed", "pending", "repaired"), 0
        )
        self.stats["epoch_runway_days"] = 0
        self.runway_warned_at = -reconcile_mod.WARN_EVERY_S

    # -- the daemon component and the ledger's sink --------------------------------------------

    async def start(self) -> None:
        """Workers up, then the start-up reconcile in the background: it reads every
        recording kept in the vault (seconds for hundreds of thousands, docs/performance.md,
        stop 27), and calls need not wait for it: what it finds is left over from before, and
        the queue takes new closes meanwhile."""
        self.vault.ensure()
        self.queue.start(self.settings.workers, "finalizer")
        self.started_up = asyncio.Event()
        self._periodic = asyncio.create_task(self._reconcile_periodically())
        self._spool_watch = asyncio.create_task(self._watch_spool())
        log.info(
            "listening",
            extra={
                "kv": {
                    "component": self.name,
                    "vault": self.vault.path,
                    "workers": self.settings.workers,
                }
            },
        )

    async def stop(self) -> None:
        """In-flight finalizations complete; queued ones stay pending for the next start."""
        for task in (self._periodic, self._spool_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self.queue.stop)

    @property
    def hands_off(self) -> bool:
        """The ledger may tell us from the event loop: we only queue (workers run)."""
        return self.queue.running

    def recording_closed(self, recording_id: str) -> None:
        self.submit(recording_id)

    def recording_discarded(self, recording_id: str) -> None:
        self.submit(recording_id)

    def submit(self, recording_id: str) -> None:
        """Queue work for a recording (thread-safe); without a running pool, do it now."""
        self.queue.submit(recording_id)

    async def _reconcile_periodically(self) -> None:
        """The start-up pass (``full``: the vault too) at once, then a pass every
        ``reconcile_interval_s``; the full pass again until one has succeeded."""
        full = True
        while True:
            try:
                started = time.monotonic()
                found = await asyncio.to_thread(self.reconcile, full=full)
                if full:
                    seconds = round(time.monotonic() - started, 2)
                    kv = {"queued": found["queued"], "seconds": seconds}
                    log.info("startup_reconcile_done", extra={"kv": kv})
                    self.started_up.set()
                full = False
            except Exception as exc:
                if not outage.is_unavailable(exc):
                    log.exception("reconcile_failed")
                else:  # the store is away: said once with the calls, not a traceback a pass
                    outage.OUTAGE.report(exc, "reconcile")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def _watch_spool(self) -> None:
        """The PBX writes into the spool: its file system filling up cuts recordings short."""
        while True:
            try:
                await asyncio.to_thread(self.alarms.check_spool)  # statvfs may block (NFS)
            except OSError as exc:
                log.warning("spool_watch_failed", extra={"kv": {"error": str(exc)}})
            await asyncio.sleep(self.settings.spool_watch_s)

    # -- one recording ---------------------------------------------------------------------------

    def process(self, recording_id: str) -> Outcome:
        """Bring one recording to where its row says it should be."""
        for _ in range(3):
            with self.db.reading() as r:
                rec = r.first(_LOOK, {"b_id": recording_id})
            if rec is None:
                return Outcome.SKIPPED
            ended = rec.call_ended_at
            if rec.state in (S.DISCARDED, S.PURGED):
                outcome = self.destroy(rec)
            elif rec.state == S.ENCRYPTED:
                outcome = self._drop_plaintext(rec)
            elif rec.state == S.CLOSED:
                outcome = self._finalize(rec, ended)
            else:
                outcome = self._adopt_if_settled(rec, ended)
            if outcome is not Outcome.RECHECK:
                return outcome
        return Outcome.BUSY

    @contextlib.contextmanager
    def _locked(self, rec: Recording) -> Iterator[int | None]:
        """The spool file, open (O_NOFOLLOW) and flocked; None if another holds it."""
        fd = self.spool.open_recording(Path(rec.spool_path))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield fd
        finally:
            os.close(fd)

    def _finalize(self, rec: Recording, ended: datetime | None) -> Outcome:
        try:
            with self._locked(rec) as fd:
                if fd is None:
                    return Outcome.BUSY
                # one read: another process may have finished it meanwhile; and its key epoch
                # (looked at only once the WAV is known final, as before)
                with self.db.reading() as r:
                    now = r.first(_STATE, {"b_id": rec.id})
                    if now is None or now.state != S.CLOSED:
                        return Outcome.RECHECK
                    expires = self.retention.expires_at(rec.retention_category, rec.started_at)
                    epoch = self._epoch(expires, r)
                return self._seal(rec, fd, ended, expires, epoch)
        except FileNotFoundError:
            return self._pending(rec, "the spool file is missing", error=True)
        except (SpoolError, wavcheck.AudioError) as exc:
            return self._pending(rec, str(exc), error=True)
        except OSError as exc:  # ELOOP: a symlink where a recording should be
            return self._pending(rec, f"cannot open the spool file: {exc}", error=True)

    def _inspect(
        self, rec: Recording, fd: int, ended: datetime | None
    ) -> tuple[wavcheck.AudioInfo, wavcheck.Repair | None] | None:
        if rec.format == "raw":
            return wavcheck.inspect_raw(os.fstat(fd).st_size, rec.sample_rate, rec.channels), None
        with os.fdopen(os.dup(fd), "rb") as f:
            for delay in (*self.settings.not_final_retries, None):
                size = os.fstat(fd).st_size
                try:
                    return wavcheck.inspect_wav(f, size), None
                except wavcheck.NotFinal:
                    if self._settled(fd, ended):
                        return wavcheck.repaired(f, size)
                    if delay is None:
                        return None
                    time.sleep(delay)
        return None

    def _settled(self, fd: int, ended: datetime | None) -> bool:
        """The call is over and the file has not changed for ``settle_s``."""
        return ended is not None and time.time() - os.fstat(fd).st_mtime >= self.settings.settle_s

    def _epoch(self, expires: datetime, r: Reading) -> Epoch | NoEpoch:
        try:
            return self.keys.epoch_for(expires, r)
        except NoEpoch as exc:
            return exc

    def _seal(
        self, rec: Recording, fd: int, ended: datetime | None, expires: datetime,
        epoch: Epoch | NoEpoch,
    ) -> Outcome:  # fmt: skip
        found = self._inspect(rec, fd, ended)
        if found is None:
            return self._pending(rec, "the WAV header is not final yet")
        info, repair = found
        if isinstance(epoch, NoEpoch):
            exc = epoch
            self.alarms.failed(
                "no_key_epoch",
                "recording_pending_no_key_epoch",
                {"recording": rec.id, "why": str(exc), "effect": "its plaintext stays pending"},
            )
            return self._pending(rec, str(exc), error=True, said=True)
        self._step("opened")
        data_key = os.urandom(32)
        slot = envelope.wrap(data_key, epoch.public_key, rec.id, epoch.id)
        try:
            sealed = self.vault.seal(rec.id, _chunks(fd, info), data_key, [slot], self._step)
        except OSError as exc:
            self.stats["failed"] += 1
            why = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            cause = "disk_full" if exc.errno == errno.ENOSPC else "io"
            metrics.FINALIZE_FAILURES.labels(cause).inc()
            self.alarms.failed(
                f"vault_{cause}",
                "finalize_failed",
                {
                    "recording": rec.id,
                    "error": f"{why} writing to the vault {self.vault.path}",
                    "effect": "plaintext and store untouched; retried at the next reconcile",
                },
            )
            return Outcome.FAILED
        self._step("renamed")
        cut = self.alarms.spool_was_full(rec.started_at, rec.closed_at)
        if not self._commit(rec, info, repair, sealed, epoch.id, expires, cut):
            self.vault.remove(rec.id)  # discarded while we encrypted
            return Outcome.RECHECK
        self._step("committed")
        # not made durable here: see _unlink_plaintext
        self._unlink_plaintext(Path(rec.spool_path), fd, durable=False)
        self._step("unlinked")
        self.stats["encrypted"] += 1
        self.alarms.succeeded()
        if rec.closed_at is not None:  # closed -> encrypted, plaintext gone
            metrics.FINALIZE_SECONDS.observe((datetime.now(UTC) - rec.closed_at).total_seconds())
        kv: dict[str, object] = {
            "recording": rec.id,
            "epoch": epoch.id,
            "bytes": sealed.plaintext_size,
        }
        if cut:
            metrics.POSSIBLY_TRUNCATED.inc()
            log.warning("recording_encrypted", extra={"kv": {**kv, "possibly_truncated": _CUT}})
        else:
            log.info("recording_encrypted", extra={"kv": kv})
        return Outcome.ENCRYPTED

    def _commit(
        self,
        rec: Recording,
        info: wavcheck.AudioInfo,
        repair: wavcheck.Repair | None,
        sealed: Sealed,
        epoch_id: str,
        expires: datetime,
        cut: bool = False,
    ) -> bool:
        values = {
            "b_id": rec.id,
            "b_duration_ms": info.duration_ms,
            "b_plaintext_size": sealed.plaintext_size,
            "b_plaintext_sha256": sealed.plaintext_sha256,
            "b_ciphertext_path": str(sealed.path),
            "b_ciphertext_size": sealed.ciphertext_size,
            "b_ciphertext_sha256": sealed.ciphertext_sha256,
            "b_key_epoch": epoch_id,
            "b_expires_at": expires,
        }

        def commit(b: Batch) -> bool:
            """A group-commit job: with many recordings closed at once (a burst), their
            commits share transactions and fsyncs with each other and with the calls'."""
            done = _ENCRYPTED.first(b, {**values, "b_encrypted_at": datetime.now(UTC)})
            if done is None:  # discarded (or purged) while we encrypted
                return False
            if repair is not None:
                b.audit(
                    actor=SYSTEM_ACTOR, action="recording.header_repaired",
                    subject_type="recording", subject_id=rec.id,
                    details={
                        "riff_size_before": repair.riff_before,
                        "data_size_before": repair.data_before,
                        "data_size_after": repair.data_after,
                        "dropped_bytes": repair.dropped_bytes,
                    },
                )  # fmt: skip
            b.audit(
                actor=SYSTEM_ACTOR, action="recording.encrypted",
                subject_type="recording", subject_id=rec.id,
                details={
                    "call_id": rec.call_id,
                    "key_epoch": epoch_id,
                    "duration_ms": info.duration_ms,
                    "plaintext_sha256": sealed.plaintext_sha256,
                    "ciphertext_sha256": sealed.ciphertext_sha256,
                    "expires_at": expires.isoformat(),
                    **({"possibly_truncated": _CUT} if cut else {}),
                    "row": rowseal.seal_of("recordings", done),
                },
            )  # fmt: skip
            return True

        committed = self.ledger.writer.run(commit, lazy=True)  # shares a call's commit
        if committed and repair is not None:
            self.stats["repaired"] += 1
        return committed

    def _unlink_plaintext(self, path: Path, fd: int | None = None, *, durable: bool = True) -> bool:
        """Remove a spool file (the one ``fd`` has open, if given: never a file swapped in);
        ``durable``: fsync the spool directory, so the removal survives a power cut.

        After an encryption the removal is not made durable here: the file system's next
        journal commit carries it (ext4 commits every five seconds, and whenever an fsync
        needs it). A power cut before that brings the file's name back with
        its row already ``encrypted`` and the ciphertext durable, which is the crash matrix's
        "killed after the commit": reconciliation removes it, at start-up and at every pass
        (tests/recorder/finalize/test_crash.py). The directory fsync cost each recording of
        a burst of closes a journal commit of its own (bench/finalize.py, full runs: burst p99
        over the format's minimum work 1.22-1.38 with it, 1.04-1.26 without). A discarded or purged
        recording's removal stays durable before its audit row says it is gone."""
        try:
            st = os.stat(path, follow_symlinks=False)
            if fd is not None:
                held = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
                    return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        if durable:
            fsync_dir(path.parent)
        return True

    def _pending(
        self, rec: Recording, why: str, *, error: bool = False, said: bool = False
    ) -> Outcome:
        """Leave it for the next reconcile; a lasting problem goes into ``last_error`` (and
        a log line, unless the alarms already ``said`` it)."""
        self.stats["pending"] += 1
        if error:
            if not said:
                log.error("recording_pending", extra={"kv": {"recording": rec.id, "reason": why}})
            with self.db.write() as s:
                row = s.get(Recording, rec.id)
                if row is not None and row.state == S.CLOSED:
                    row.last_error = why[:500]
        return Outcome.PENDING

    def destroy(self, rec: Recording) -> Outcome:
        """A discarded (or purged) recording: no audio of it may remain anywhere."""
        self._step("destroy")
        removed = []
        if self._unlink_plaintext(Path(rec.spool_path)):
            removed.append("plaintext")
        if self.vault.remove(rec.id):
            removed.append("ciphertext")
        for tmp in self.vault.temp_files():
            if tmp.name.startswith(f".{rec.id}.") and unused_temp(tmp):
                tmp.unlink(missing_ok=True)
        if removed:
            with self.db.write() as s:
                audit.append(
                    s, self.ctx, actor=SYSTEM_ACTOR, action="recording.audio_destroyed",
                    subject_type="recording", subject_id=rec.id,
                    details={"removed": removed, "state": rec.state},
                )  # fmt: skip
            self.stats["destroyed"] += 1
            log.info(
                "recording_destroyed",
                extra={"kv": {"recording": rec.id, "removed": ",".join(removed)}},
            )
        return Outcome.DESTROYED

    def _drop_plaintext(self, rec: Recording) -> Outcome:
        """Committed before a crash took the unlink: the plaintext goes now, if the
        ciphertext is really there (never lose audio)."""
        if not Path(rec.spool_path).exists():
            return Outcome.ENCRYPTED
        if not self.vault.path_for(rec.id).is_file():
            log.error(
                "ciphertext_missing", extra={"kv": {"recording": rec.id, "kept": "plaintext"}}
            )
            return Outcome.FAILED
        self._unlink_plaintext(Path(rec.spool_path))
        return Outcome.ENCRYPTED

    def _adopt_if_settled(self, rec: Recording, ended: datetime | None) -> Outcome:
        """A ``recording`` row whose call is over: if its file is final, or settled, the PBX
        closed it while we did not hear (or crashed): close it and finalize."""
        if ended is None:
            return Outcome.SKIPPED
        try:
            with self._locked(rec) as fd:
                if fd is None:
                    return Outcome.BUSY
                if rec.format != "raw" and not self._settled(fd, ended):
                    try:
                        with os.fdopen(os.dup(fd), "rb") as f:
                            wavcheck.inspect_wav(f, os.fstat(fd).st_size)
                    except (wavcheck.NotFinal, wavcheck.AudioError):
                        return Outcome.PENDING
                elif not self._settled(fd, ended):
                    return Outcome.PENDING
        except (OSError, SpoolError):
            return Outcome.SKIPPED
        self.ledger.recording_closed(rec.id)  # audited; its sink (us) queues the finalization
        return Outcome.RECHECK

    # -- reconciliation (recorder.finalize.reconcile) ------------------------------------

    def reconcile(self, *, full: bool = False) -> dict[str, int]:
        """Compare spool, vault and store; queue whatever is left to do (see
        :func:`recorder.finalize.reconcile.reconcile`)."""
        return reconcile_mod.reconcile(self, full=full)

    def check_runway(self) -> float:
        return reconcile_mod.check_runway(self)


def _chunks(fd: int, info: wavcheck.AudioInfo) -> Iterator[bytes]:
    """The plaintext WAV: the header we put first, then the spool file's audio bytes."""
    if info.header:
        yield info.header
    offset, left = info.source_offset, info.source_size
    while left > 0:
        chunk = os.pread(fd, min(_BLOCK, left), offset)
        if not chunk:
            raise wavcheck.AudioError("the spool file shrank while it was encrypted")
        offset += len(chunk)
        left -= len(chunk)
        yield chunk
