"""Data-subject requests by phone number (GDPR Art. 15, 17, 20).

The number, in any common notation, is normalised to E.164 and found through its keyed hash;
it is never written to the audit log, which records only what was done and how much.

Export writes every call, consent decision and recording of the number into a new directory:
``recordings/<id>.wav`` (decrypted, verified against the stored SHA-256) and ``manifest.json``
(machine-readable, with the SHA-256 of each file); or, prepared for a stream (the web
console's zip), the same manifest and files decrypted as they are sent, never to disk.
Erasure deletes the recordings (held ones are kept and listed) and removes the number from
every row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from recorder.governance.custody import Custody, ElsewhereError
from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import Call, ConsentRecord, NumberKind, Recording, RecordingState
from recorder.store.numbers import NumberProtector
from recorder.vault import directory as vault
from recorder.vault.keystore import PrivateKeys

MANIFEST_FORMAT = "callconsent-subject-export/1"


class SubjectError(Exception):
    """The request cannot be carried out as asked; the message says why."""


@dataclass
class Erasure:
    calls: int = 0
    deleted: list[str] = field(default_factory=list)
    held_kept: list[str] = field(default_factory=list)
    elsewhere: dict[str, str] = field(default_factory=dict)  # recording -> the host to run on

    @property
    def complete(self) -> bool:
        return not self.elsewhere


class Subjects:
    def __init__(
        self, db: Database, numbers: NumberProtector, ctx: audit.AuditContext, custody: Custody
    ) -> None:
        self.db = db
        self.numbers = numbers
        self.ctx = ctx
        self.custody = custody

    def calls_of(self, number: str) -> list[Call]:
        key = self.numbers.lookup_key(number)  # NotAPhoneNumber for anything else
        with self.db.read() as s:
            return list(
                s.execute(
                    select(Call).where(Call.number_key == key).order_by(Call.started_at)
                ).scalars()
            )

    # -- Art. 15 / 20 ---------------------------------------------------------------------------

    def export(
        self, number: str, out: Path, private: PrivateKeys, *, actor: str, reason: str
    ) -> dict[str, Any]:
        e164 = self.numbers.normalise(number)
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise SubjectError(f"{out} is not empty: export into a new directory")
        (out / "recordings").mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(out, 0o700)

        def write(rec: Recording, rel: str) -> str:
            _, digest = vault.decrypt_to(
                Path(rec.ciphertext_path or ""), rec.id, private.private_key, out / rel
            )
            if digest != rec.plaintext_sha256:
                (out / rel).unlink(missing_ok=True)
                raise SubjectError("it does not match its stored hash")
            return digest

        manifest = self._manifest(number, e164, write)
        data = manifest_bytes(manifest)
        fd = os.open(out / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._audit_export(manifest, data, actor, reason)
        return manifest

    def prepare_export(
        self, number: str, private: PrivateKeys, *, actor: str, reason: str
    ) -> PreparedExport:
        """The same export for a caller that streams it (the web console's zip) instead of
        writing a directory: every recording is decrypted and checked against its stored hash
        now, writing nothing, so the manifest (and which recordings are unreadable) is known
        before a byte is sent; :meth:`PreparedExport.plaintext` decrypts each again as it is
        sent. The audit row is written now, as the CLI writes it."""
        e164 = self.numbers.normalise(number)
        files: list[ExportFile] = []

        def check(rec: Recording, rel: str) -> str:
            path = Path(rec.ciphertext_path or "")
            _, digest, _, _ = vault.authenticate(path, rec.id, private.private_key)
            if digest != rec.plaintext_sha256:
                raise SubjectError("it does not match its stored hash")
            files.append(ExportFile(rel, path, rec.id, digest, rec.plaintext_size or 0))
            return digest

        manifest = self._manifest(number, e164, check)
        data = manifest_bytes(manifest)
        self._audit_export(manifest, data, actor, reason)
        return PreparedExport(manifest, data, files, private)

    def _manifest(
        self, number: str, e164: str, keep: Callable[[Recording, str], str]
    ) -> dict[str, Any]:
        calls, files = [], []
        for call in self.calls_of(number):
            entry, kept = self._call_entry(call, keep)
            calls.append(entry)
            files += kept
        return {
            "format": MANIFEST_FORMAT,
            "generated_at": datetime.now(UTC).isoformat(),
            "subject": {"phone_number": e164},
            "calls": calls,
            "files": files,
        }

    def _audit_export(self, manifest: dict[str, Any], data: bytes, actor: str, reason: str) -> None:
        with self.db.write() as s:
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="subject.exported",
                subject_type="subject",
                subject_id=None,
                details={
                    "reason": reason,
                    "calls": len(manifest["calls"]),
                    "recordings": len(manifest["files"]),
                    "unreadable": unreadable(manifest),
                    "manifest_sha256": hashlib.sha256(data).hexdigest(),
                },
            )

    def _call_entry(
        self, call: Call, keep: Callable[[Recording, str], str]
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """The call's manifest entry; ``keep(recording, path in the export)`` decrypts one
        recording (to a file, or only to check it) and returns its SHA-256, or raises."""
        with self.db.read() as s:
            consent = list(
                s.execute(
                    select(ConsentRecord)
                    .where(ConsentRecord.call_id == call.id)
                    .order_by(ConsentRecord.decided_at)
                ).scalars()
            )
            recordings = list(
                s.execute(
                    select(Recording)
                    .where(Recording.call_id == call.id)
                    .order_by(Recording.started_at)
                ).scalars()
            )
        files, recs = [], []
        for rec in recordings:
            item: dict[str, Any] = {
                "id": rec.id,
                "state": rec.state,
                "started_at": _iso(rec.started_at),
                "duration_ms": rec.duration_ms,
                "channels": rec.channels,
                "legal_hold": rec.legal_hold,
                "expires_at": _iso(rec.expires_at),
            }
            if rec.state == RecordingState.ENCRYPTED.value and rec.ciphertext_path:
                rel = f"recordings/{rec.id}.wav"
                try:
                    digest = keep(rec, rel)
                except Exception as exc:  # one recording must not cost the subject the rest
                    # (its key destroyed at expiry, its file on another host, tampering)
                    item["unreadable"] = str(exc) or type(exc).__name__
                else:
                    item |= {"file": rel, "sha256": digest}
                    files.append({"path": rel, "sha256": digest})
            recs.append(item)
        entry = {
            "call_id": call.id,
            "pbx": call.pbx,
            "campaign": call.campaign,
            "direction": call.direction,
            "started_at": _iso(call.started_at),
            "ended_at": _iso(call.ended_at),
            "consent_status": call.consent_status,
            "consent": [
                {
                    "kind": c.kind,
                    "status": c.status,
                    "method": c.method,
                    "legal_basis": c.legal_basis,
                    "decided_at": _iso(c.decided_at),
                    "language": c.language,
                    "prompt": c.prompt_id,
                    "prompt_sha256": c.prompt_sha256,
                    "digits": c.digits,
                    "prompts": c.prompts,
                    "attempts": c.attempts,
                    "policy": c.policy,
                    "actor": c.actor,
                }
                for c in consent
            ],
            "recordings": recs,
        }
        return entry, files

    # -- Art. 17 ----------------------------------------------------------------------------------

    def erase(self, number: str, *, actor: str, reason: str) -> Erasure:
        calls = self.calls_of(number)
        result = Erasure(calls=len(calls))
        for call in calls:
            for rec in self.custody.ledger.recordings_of_call(call.id):
                if rec.legal_hold:
                    result.held_kept.append(rec.id)
                elif rec.state in (
                    RecordingState.RECORDING.value,
                    RecordingState.CLOSED.value,
                    RecordingState.ENCRYPTED.value,
                ):
                    try:
                        self.custody.delete(
                            rec.id, actor=actor, reason=reason, purge_reason="subject_erasure"
                        )
                    except ElsewhereError as exc:
                        result.elsewhere[rec.id] = exc.host
                        continue
                    result.deleted.append(rec.id)
        with self.db.write() as s:
            # the number stays until no recording of it is left on another host: else what
            # is left there could no longer be found by the number, nor erased
            if calls and result.complete:
                s.execute(
                    update(Call)
                    .where(Call.id.in_([c.id for c in calls]))
                    .values(number_key=None, number_enc=None, number_kind=NumberKind.ERASED.value)
                )
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="subject.erased",
                subject_type="subject",
                subject_id=None,
                details={
                    "reason": reason,
                    "calls": len(calls),
                    "recordings_deleted": len(result.deleted),
                    "held_kept": result.held_kept,
                }
                | (
                    {"left_on_other_hosts": sorted(set(result.elsewhere.values()))}
                    if result.elsewhere
                    else {}
                ),
            )
        return result


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """``manifest.json`` as every export writes it."""
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode()


@dataclass(frozen=True)
class ExportFile:
    path: str  # in the export: recordings/<id>.wav
    ciphertext: Path
    recording_id: str
    sha256: str  # of the plaintext, checked when the export was prepared
    size: int


@dataclass
class PreparedExport:
    """An export whose manifest is known and audited; its files are decrypted as they are
    read (:meth:`plaintext`), never written anywhere."""

    manifest: dict[str, Any]
    manifest_json: bytes
    files: list[ExportFile]
    private: PrivateKeys

    def plaintext(self, file: ExportFile) -> Iterator[bytes]:
        """The recording's WAV, segment by segment; raises :class:`SubjectError` at the end
        if it no longer matches what was checked (its file changed since)."""
        h = hashlib.sha256()
        for segment in vault.plaintext(
            file.ciphertext, file.recording_id, self.private.private_key
        ):
            h.update(segment)
            yield segment
        if h.hexdigest() != file.sha256:
            raise SubjectError(f"recording {file.recording_id} changed while it was exported")


def unreadable(manifest: dict[str, Any]) -> list[str]:
    """The recordings an export lists but could not decrypt (each says why)."""
    return [r["id"] for c in manifest["calls"] for r in c["recordings"] if "unreadable" in r]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
