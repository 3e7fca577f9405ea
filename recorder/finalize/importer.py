"""Adopting recordings a PBX already holds (FreePBX's and FusionPBX's folders of plaintext
WAVs): each becomes a call (``pbx = "import"``) with its legal basis, a recording registered
before its file enters the spool, and then goes through the same finalizer as a live one.

The source's path is never stored or audited: PBX file names often hold phone numbers. The
source is removed (``delete_source``) only after the encrypted copy is committed, and only if
it did not change while it was read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from consent_ivr.policy import LegalBasis
from recorder.finalize import wavcheck
from recorder.finalize.finalizer import Finalizer, Outcome
from recorder.store import audit
from recorder.store.ledger import Ledger
from recorder.store.models import ConsentRecord, Recording
from recorder.vault.directory import fsync_dir
from recorder.vault.keystore import NoEpoch

_BLOCK = 1 << 20


class ImportRefused(Exception):
    """A source file cannot be imported; the message says why."""


@dataclass(frozen=True, slots=True)
class Imported:
    recording_id: str
    call_id: str
    duration_ms: int
    plaintext_sha256: str
    source_deleted: bool


@dataclass(frozen=True, slots=True)
class ImportRequest:
    legal_basis: str
    campaign: str
    retention_category: str
    recorded_at: datetime | None = None  # None: the source file's modification time
    number: str | None = None
    delete_source: bool = False
    actor: str = "callconsent"


class Importer:
    def __init__(self, ledger: Ledger, finalizer: Finalizer) -> None:
        self.ledger = ledger
        self.finalizer = finalizer
        self.spool = finalizer.spool

    def import_file(self, source: Path, req: ImportRequest) -> Imported:
        try:
            basis = LegalBasis(req.legal_basis)
        except ValueError:
            raise ImportRefused(f"unknown legal basis {req.legal_basis!r}") from None
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ImportRefused(f"{source}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImportRefused(f"{source}: not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                try:
                    info = wavcheck.inspect_wav(f, st.st_size)
                except (wavcheck.NotFinal, wavcheck.AudioError) as exc:
                    raise ImportRefused(f"{source}: {exc}") from None
            recorded_at = req.recorded_at or datetime.fromtimestamp(st.st_mtime).astimezone()
            self._check_expiry(req, recorded_at)
            rid, call_id = self._register(basis, req, info, recorded_at)
            self._copy_into_spool(fd, rid)
        finally:
            os.close(fd)
        at = Ledger(self.ledger.db, self.ledger.numbers, self.ledger.ctx, clock=lambda: recorded_at)
        at.call_ended(call_id)
        at.recording_closed(rid)
        outcome = self.finalizer.process(rid)
        if outcome is not Outcome.ENCRYPTED:
            raise ImportRefused(
                f"{source}: recording {rid} is registered but {outcome.value}: "
                "see `callconsent recordings show` and the log; the source was kept"
            )
        with self.ledger.db.read() as s:
            rec = s.get(Recording, rid)
            assert rec is not None
            sha = rec.plaintext_sha256 or ""
        deleted = False
        if req.delete_source:
            deleted = _delete_if_unchanged(source, st, sha)
        return Imported(rid, call_id, info.duration_ms, sha, deleted)

    def _check_expiry(self, req: ImportRequest, recorded_at: datetime) -> None:
        """Refuse, before registering anything, what must not or cannot be kept."""
        rule = self.finalizer.retention
        expires = rule.expires_at(req.retention_category, recorded_at)
        if expires <= datetime.now(UTC):
            raise ImportRefused(
                f"its retention ({rule.days_for(req.retention_category)} days for category "
                f"{req.retention_category!r}) ended on {expires:%Y-%m-%d}: delete it, do not "
                "adopt it"
            )
        try:
            self.finalizer.keys.epoch_for(expires)
        except NoEpoch as exc:
            raise ImportRefused(str(exc)) from None

    def _register(
        self, basis: LegalBasis, req: ImportRequest, info: wavcheck.AudioInfo, at: datetime
    ) -> tuple[str, str]:
        """The call, its decision and the recording, before the file enters the spool."""
        ledger = Ledger(self.ledger.db, self.ledger.numbers, self.ledger.ctx, clock=lambda: at)
        rid = str(uuid.uuid4())
        call = ledger.open_call(
            pbx="import", pbx_call_id=rid, campaign=req.campaign, direction="unknown",
            number=req.number,
        )  # fmt: skip
        status = "granted" if basis is LegalBasis.CONSENT else "not_required"
        with ledger.db.write() as s:
            s.add(
                ConsentRecord(
                    id=str(uuid.uuid4()), call_id=call.id, kind="decision", status=status,
                    method="import", actor=req.actor[:64], legal_basis=basis.value,
                    policy={"imported": True, "campaign": req.campaign}, decided_at=at,
                )
            )  # fmt: skip
            audit.append(
                s, ledger.ctx, actor=req.actor, action="recording.imported",
                subject_type="recording", subject_id=rid,
                details={"call_id": call.id, "legal_basis": basis.value,
                         "campaign": req.campaign, "recorded_at": at.isoformat()},
            )  # fmt: skip
        ledger.recording_started(
            call.id, rid, spool_path=str(self.spool.path_for(rid, "wav")), fmt="wav",
            channels=info.channels, sample_rate=info.sample_rate,
            retention_category=req.retention_category, actor=req.actor,
        )  # fmt: skip
        return rid, call.id

    def _copy_into_spool(self, src: int, rid: str) -> None:
        """Copy under a temp name (flocked, so reconciliation leaves it alone), fsync, then
        rename: the spool never shows a partial recording under a recording's name."""
        tmp = self.spool.path / f".import-{rid}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        try:
            fcntl.flock(out, fcntl.LOCK_EX)
            offset = 0
            while chunk := os.pread(src, _BLOCK, offset):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                offset += len(chunk)
            os.fsync(out)
            os.rename(tmp, self.spool.path_for(rid, "wav"))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(out)
        fsync_dir(self.spool.path)


def _delete_if_unchanged(source: Path, before: os.stat_result, sha256: str) -> bool:
    st = os.stat(source, follow_symlinks=False)
    if (st.st_ino, st.st_size, st.st_mtime_ns) != (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    ):
        return False
    h = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    if h.hexdigest() != sha256:
        return False
    os.unlink(source)
    fsync_dir(source.parent)
    return True
