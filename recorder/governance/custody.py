"""One recording's custody: legal hold, its release, and deletion by a DPO.

A hold first re-wraps the recording's data key to the hold key (a second key slot; the audio
is not re-encrypted, see ``docs/recording-format.md``), then marks the row held: from then on
neither retention, nor erasure, nor the destruction of its expiry epoch's key can take it.
That needs the private key of its epoch, i.e. the key store's passphrase. There is no limit on
how many recordings may be held.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.ledger import Ledger
from recorder.store.models import Call, Recording, RecordingState
from recorder.vault import envelope
from recorder.vault import fileformat as ff
from recorder.vault.directory import fsync_dir
from recorder.vault.keystore import KeyStore, PrivateKeys


class CustodyError(Exception):
    """The recording cannot be held, released or deleted as asked; the message says why."""


class ElsewhereError(CustodyError):
    """The recording's audio is on another host's disk: only that host can delete it."""

    def __init__(self, message: str, host: str) -> None:
        super().__init__(message)
        self.host = host


class Custody:
    def __init__(
        self,
        db: Database,
        ctx: audit.AuditContext,
        keys: KeyStore,
        ledger: Ledger,
        *,
        node: str | None = None,
        shared_storage: bool = False,
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.keys = keys
        self.ledger = ledger
        self.node = (node or ctx.node)[:64]  # whose vault this host can delete from
        self.shared_storage = shared_storage

    def _get(self, rid: str) -> Recording:
        with self.db.read() as s:
            rec = s.get(Recording, rid)
        if rec is None:
            raise CustodyError(f"no recording {rid}")
        return rec

    def hold(self, rid: str, private: PrivateKeys, *, actor: str, reason: str) -> bool:
        """Put a recording under legal hold. False if it already was."""
        rec = self._get(rid)
        if rec.legal_hold:
            return False
        if rec.state != RecordingState.ENCRYPTED.value or not rec.ciphertext_path:
            raise CustodyError(
                f"recording {rid} is {rec.state}: only an encrypted recording can be held "
                "(a closed one is encrypted within seconds; try again)"
            )
        hold = private.ensure_hold_key(actor)
        path = Path(rec.ciphertext_path)
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
            slots = ff.read_slots(f)
        if not any(s.epoch == hold.id for s in slots):
            source = next((s for s in slots if s.epoch == rec.key_epoch), None)
            if source is None:
                raise CustodyError(f"recording {rid} has no key slot for epoch {rec.key_epoch}")
            try:
                data_key = envelope.unwrap(source, private.private_key(source.epoch), rid)
            except Exception as exc:
                raise CustodyError(
                    f"recording {rid} cannot be re-wrapped: {exc} (its epoch's key may be "
                    "destroyed already)"
                ) from None
            ff.rewrite_slots(path, [*slots, envelope.wrap(data_key, hold.public_key, rid, hold.id)])
        with self.db.write() as s:
            row = s.execute(
                select(Recording).where(Recording.id == rid).with_for_update()
            ).scalar_one()
            if row.state != RecordingState.ENCRYPTED.value:  # purged or deleted meanwhile
                raise CustodyError(
                    f"recording {rid} became {row.state} while it was being held: its audio "
                    "is gone, nothing is held"
                )
            row.legal_hold, row.hold_reason, row.hold_key = True, reason, hold.id
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="recording.held",
                subject_type="recording",
                subject_id=rid,
                details={"reason": reason, "hold_key": hold.id},
            )
        return True

    def unhold(self, rid: str, *, actor: str, reason: str) -> bool:
        """Release a hold. The recording is purged by the next pass if it has expired; its hold
        key slot stays (its expiry epoch's key may already be gone)."""
        rec = self._get(rid)
        if not rec.legal_hold:
            return False
        with self.db.write() as s:
            row = s.get(Recording, rid)
            assert row is not None
            row.legal_hold = False
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="recording.released",
                subject_type="recording",
                subject_id=rid,
                details={"reason": reason, "was": row.hold_reason or ""},
            )
        return True

    def delete(self, rid: str, *, actor: str, reason: str, purge_reason: str = "dpo_delete") -> str:
        """Delete a recording's audio now (a DPO's decision). Returns the new state. The row
        is locked while it is checked and the file removed, so a hold cannot slip in between."""
        rec = self._get(rid)
        if rec.state in (RecordingState.RECORDING.value, RecordingState.CLOSED.value):
            if rec.legal_hold:
                raise _held(rec)
            # audio still in the spool: the finalizer destroys it instead of encrypting it
            self.ledger.discard(rid, purge_reason, actor)
            return RecordingState.DISCARDED.value
        with self.db.write() as s:
            row = s.execute(
                select(Recording).where(Recording.id == rid).with_for_update()
            ).scalar_one()
            if row.legal_hold:
                raise _held(row)
            if row.state != RecordingState.ENCRYPTED.value:
                raise CustodyError(f"recording {rid} is {row.state}: its audio is already gone")
            host = s.get(Call, row.call_id).node
            if host != self.node and not self.shared_storage:
                # its file is in that host's vault: "not found" here proves nothing
                raise ElsewhereError(
                    f"recording {rid}'s audio is in the vault of host {host!r}: run this on "
                    "that host (or set [retention] shared_storage = true if every host sees "
                    "one vault)",
                    host,
                )
            if row.ciphertext_path:
                Path(row.ciphertext_path).unlink(missing_ok=True)
                fsync_dir(Path(row.ciphertext_path).parent)
            row.state = RecordingState.PURGED.value
            row.purged_at, row.purge_reason = datetime.now(UTC), purge_reason
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="recording.deleted",
                subject_type="recording",
                subject_id=rid,
                details={"reason": reason, "purge_reason": purge_reason},
            )
        return RecordingState.PURGED.value


def _held(rec: Recording) -> CustodyError:
    return CustodyError(
        f"recording {rec.id} is under legal hold ({rec.hold_reason}): "
        "release the hold first (recordings unhold)"
    )
