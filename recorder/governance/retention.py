"""Retention: purge expired recordings, destroy spent key epochs, re-apply changed policies.

A purge pass takes expired, unheld, encrypted recordings in batches. Each batch is one
transaction: its rows are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several PBX
hosts can purge one database at once without taking the same row; SQLite's single writer
does the same by itself), their files unlinked, the directory fsynced, then the rows marked
``purged`` with one audit row each, and committed. A file that cannot be removed is reported
and its row left as it was, to be retried: a purge never skips a file silently. A crash
between unlink and commit leaves rows whose file is gone; the next pass purges them.

Crypto-shredding then destroys the private key of every expiry epoch whose week is over and
that no live (unexpired, unheld) recording needs. Held recordings were re-wrapped to a hold
key (:mod:`recorder.governance.custody`), so they never keep an epoch alive.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, not_, or_, select

from recorder import metrics
from recorder.store import audit
from recorder.store.db import PURGE_CACHE_KIB, Database
from recorder.store.models import AuditEntry, Call, KeyEpoch, Recording, RecordingState
from recorder.vault.directory import MARKER, fsync_dir
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import KeyStore

log = logging.getLogger("callconsent.retention")
ACTOR = "retention"
_CHUNK = 250  # rows per step of a batch's pipeline
_UNLINK_THREADS = 16  # unlinks in flight in the helper
_REC = Recording.__table__.c
_MARK_PURGED = Recording.__table__.update().values(
    state=RecordingState.PURGED.value, purge_reason="retention"
)


@dataclass
class PurgeReport:
    dry_run: bool
    purged: list[str] = field(default_factory=list)  # or, in a dry run, what would go
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, why): retried next pass
    held: int = 0  # expired but under legal hold: kept
    shredded: list[str] = field(default_factory=list)  # epochs whose private key was destroyed
    shred_elsewhere: list[str] = field(default_factory=list)  # due, key not on this host
    as_of: datetime | None = None  # expiry judged as on this date, not now

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "purged": len(self.purged),
            "recordings": self.purged,
            "failed": [{"id": i, "error": e} for i, e in self.failed],
            "held_kept": self.held,
            "epochs_destroyed": self.shredded,
            "epochs_due_elsewhere": self.shred_elsewhere,
            "as_of": self.as_of.isoformat() if self.as_of else None,
        }


class Retention:
    def __init__(
        self,
        db: Database,
        ctx: audit.AuditContext,
        keys: KeyStore,
        *,
        node: str,
        shared_storage: bool = False,
        batch: int = 10000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.keys = keys
        self.node = node
        self.shared_storage = shared_storage  # every host sees every file (one NFS vault)
        self.batch = batch
        self.clock = clock

    # -- purge -----------------------------------------------------------------------------------

    def _expired(self, now: datetime, skip: set[str]) -> Any:
        q = (
            select(Recording.id, Recording.ciphertext_path, Recording.retention_category)
            .join(Call, Call.id == Recording.call_id)
            .where(
                Recording.state == RecordingState.ENCRYPTED.value,
                Recording.expires_at <= now,
                Recording.legal_hold.is_(False),
            )
            .order_by(Recording.expires_at)  # the index order: no sort, whatever the count
        )
        if not self.shared_storage:
            q = q.where(Call.node == self.node[:64])  # the files are on the host that made them
        if skip:
            q = q.where(Recording.id.not_in(skip))
        return q

    def run(
        self, *, dry_run: bool = False, shred: bool = True, as_of: datetime | None = None
    ) -> PurgeReport:
        """One pass. ``as_of`` judges expiry (and spent epochs) as on that date instead of
        now: with ``dry_run``, a preview of that day's purge; for real, only when an admin
        forced it (``retention run --force-as-of``, audited by the caller). Rows and audit
        entries are stamped with the real time, and a purge's audit rows name ``as_of``."""
        now = self.clock()
        cutoff = as_of or now
        report = PurgeReport(dry_run, as_of=as_of)
        with self.db.read() as s:
            report.held = (
                s.execute(
                    select(Recording.id).where(
                        Recording.state == RecordingState.ENCRYPTED.value,
                        Recording.expires_at <= cutoff,
                        Recording.legal_hold.is_(True),
                    )
                )
                .all()
                .__len__()
            )
        if dry_run:
            with self.db.read() as s:
                report.purged = [r.id for r in s.execute(self._expired(cutoff, set()))]
                report.shredded = self._spent_epochs(s, cutoff)
            return report
        failed: set[str] = set()
        with Unlinker() as unlinker:
            while self._purge_batch(now, report, failed, unlinker, cutoff):
                pass
        if shred:
            self.shred(cutoff, report)
        return report

    def _purge_batch(
        self,
        now: datetime,
        report: PurgeReport,
        failed: set[str],
        unlinker: Unlinker,
        cutoff: datetime | None = None,
    ) -> bool:
        """One transaction. Its rows go through in chunks: while the unlinker deletes chunk
        i + 1, chunk i's audit rows are hashed and its rows written. The directory is fsynced
        (the deletions are durable) before the commit says ``purged``."""
        with self.db.write(cache_kib=PURGE_CACHE_KIB) as s:
            q = self._expired(cutoff or now, failed).limit(self.batch)
            if self.db.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True, of=Recording)
            rows = s.execute(q).all()
            if not rows:
                return False
            rows, vaults = self._in_reachable_vaults(rows, report, failed)
            if not rows:
                return True  # this batch's rows are noted as failed; the next query skips them
            head = audit.lock_head(s)
            tail = (head.seq, head.hash)
            chunks = [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]
            details: dict[str, dict[str, str]] = {}  # one per category, shared by its rows
            as_of = report.as_of.isoformat() if report.as_of else None
            unlinker.send([r.ciphertext_path for r in chunks[0]])
            gone: list[Any] = []
            for i, chunk in enumerate(chunks):
                values = audit.chain(
                    tail, self.ctx, [_purged_row(r, details, as_of) for r in chunk], at=now
                )
                errors = unlinker.receive()
                if i + 1 < len(chunks):
                    unlinker.send([r.ciphertext_path for r in chunks[i + 1]])
                done = [r for r, e in zip(chunk, errors, strict=True) if e is None]
                if len(done) != len(chunk):  # rare: note the failures, re-chain without them
                    self._note_failures(chunk, errors, report, failed)
                    values = audit.chain(
                        tail, self.ctx, [_purged_row(r, details, as_of) for r in done], at=now
                    )
                if done:
                    s.execute(
                        _MARK_PURGED.where(_REC.id.in_([r.id for r in done])).values(purged_at=now)
                    )
                    s.execute(AuditEntry.__table__.insert(), values)
                    tail = (values[-1]["seq"], values[-1]["hash"])
                    gone += done
            for where in vaults:
                fsync_dir(Path(where))
            head.seq, head.hash = tail
        report.purged += [r.id for r in gone]
        metrics.PURGED.inc(len(gone))
        return True

    def _in_reachable_vaults(
        self, rows: list[Any], report: PurgeReport, failed: set[str]
    ) -> tuple[list[Any], list[str]]:
        """A file that is not found counts as deleted only where its vault is really there
        (its directory, and under shared storage its marker: an unmounted share is an empty
        directory). Rows elsewhere are failures, reported, never marked purged. Returns the
        rows kept and the vault directories they are in."""
        verdict: dict[str, str | None] = {}
        kept = []
        for row in rows:
            if not row.ciphertext_path:
                kept.append(row)  # no file to delete (nothing to fsync either)
                continue
            where = os.path.dirname(row.ciphertext_path)
            if where not in verdict:
                verdict[where] = _vault_problem(Path(where), self.shared_storage)
            if (problem := verdict[where]) is None:
                kept.append(row)
            else:
                failed.add(row.id)
                report.failed.append((row.id, problem))
        for where, problem in verdict.items():
            if problem is not None:
                log.error("purge_vault_unreachable", extra={"kv": {"vault": where, "why": problem}})
        return kept, [where for where, problem in verdict.items() if problem is None]

    @staticmethod
    def _note_failures(
        chunk: list[Any], errors: list[str | None], report: PurgeReport, failed: set[str]
    ) -> None:
        for row, error in zip(chunk, errors, strict=True):
            if error is not None:
                failed.add(row.id)
                report.failed.append((row.id, error))
                log.error("purge_failed", extra={"kv": {"recording": row.id, "error": error}})

    # -- crypto-shredding -------------------------------------------------------------------------

    def _spent_epochs(self, s: Any, now: datetime) -> list[str]:
        live = exists().where(
            Recording.key_epoch == KeyEpoch.id,
            Recording.state.in_([RecordingState.ENCRYPTED.value, RecordingState.CLOSED.value]),
            or_(Recording.expires_at.is_(None), Recording.expires_at > now),
            not_(and_(Recording.legal_hold.is_(True), Recording.hold_key.is_not(None))),
        )
        return list(
            s.execute(
                select(KeyEpoch.id)
                .where(
                    KeyEpoch.purpose == "expiry",
                    KeyEpoch.destroyed_at.is_(None),
                    KeyEpoch.expires_until <= now,
                    ~live,
                )
                .order_by(KeyEpoch.expires_from)
            ).scalars()
        )

    def spent_epochs(self) -> list[str]:
        """Expiry epochs whose week is over and that no live recording needs, right now."""
        with self.db.read() as s:
            return self._spent_epochs(s, self.clock())

    def shred(self, now: datetime, report: PurgeReport) -> None:
        """Destroy the epochs spent at ``now`` (the pass's cutoff: ``as_of`` if forced)."""
        with self.db.read() as s:
            due = self._spent_epochs(s, now)
        why = "no live recording needs it"
        if report.as_of is not None:
            why += f" as of {report.as_of.isoformat()} (forced)"
        for epoch_id in due:
            if self.keys.destroy_private(epoch_id, ACTOR, why):
                report.shredded.append(epoch_id)
                log.info("key_epoch_destroyed", extra={"kv": {"epoch": epoch_id}})
            else:
                report.shred_elsewhere.append(epoch_id)
                log.warning(
                    "key_epoch_destroy_elsewhere",
                    extra={
                        "kv": {
                            "epoch": epoch_id,
                            "hint": "its private key is not on this host: destroy it "
                            "where it is kept (callconsent keys destroy EPOCH)",
                        }
                    },
                )

    # -- recompute ---------------------------------------------------------------------------------

    def recompute(
        self,
        rule: RetentionRule,
        category_of: Callable[[str], str],
        *,
        actor: str,
        reason: str,
        campaign: str | None = None,
    ) -> list[tuple[str, datetime, datetime]]:
        """Re-apply the current retention to existing encrypted recordings (of one campaign):
        each changed expiry is audited. Returns (id, old, new) for each change."""
        changed: list[tuple[str, datetime, datetime]] = []
        with self.db.write() as s:
            q = (
                select(Recording, Call.campaign)
                .join(Call, Call.id == Recording.call_id)
                .where(Recording.state == RecordingState.ENCRYPTED.value)
            )
            if campaign:
                q = q.where(Call.campaign == campaign)
            rows = []
            for rec, camp in s.execute(q):
                category = category_of(camp)
                new = rule.expires_at(category, rec.started_at)
                if rec.expires_at != new or rec.retention_category != category:
                    changed.append((rec.id, rec.expires_at, new))
                    old = rec.expires_at
                    rec.expires_at, rec.retention_category = new, category
                    rows.append(
                        {
                            "actor": actor,
                            "action": "retention.recomputed",
                            "subject_type": "recording",
                            "subject_id": rec.id,
                            "details": audit.sealed(
                                {
                                    "reason": reason,
                                    "category": category,
                                    "old_expires_at": old.isoformat(),
                                    "new_expires_at": new.isoformat(),
                                },
                                rec,
                            ),
                        }
                    )
            audit.append_many(s, self.ctx, rows)
        return changed


def _purged_row(
    row: Any, details: dict[str, dict[str, str]], as_of: str | None = None
) -> dict[str, Any]:
    category = row.retention_category
    if category not in details:
        details[category] = {"reason": "retention", "category": category}
        if as_of is not None:
            details[category]["as_of"] = as_of
    return {
        "actor": ACTOR,
        "action": "recording.purged",
        "subject_type": "recording",
        "subject_id": row.id,
        "details": details[category],
    }


class Unlinker:
    """Unlinks files in a forked helper process, so deleting runs beside (not between) the
    store and audit work: a thread would fight the main thread for the GIL after every file.
    Without ``fork`` (or if the helper dies) it unlinks in this process."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._proc: Any = None
        self._pending: list[str | None] = []

    def __enter__(self) -> Unlinker:
        try:
            ctx = multiprocessing.get_context("fork")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_unlink_worker, args=(child, self._conn), daemon=True)
            self._proc.start()
            child.close()
        except (ValueError, OSError):
            self._conn = None
        return self

    def send(self, paths: list[str | None]) -> None:
        self._pending = paths
        if self._conn is not None:
            try:
                self._conn.send(paths)
            except OSError:
                self._conn = None

    def receive(self) -> list[str | None]:
        if self._conn is not None:
            try:
                return self._conn.recv()
            except (OSError, EOFError):
                self._conn = None
        return [_unlink(p) for p in self._pending]  # the helper is gone: do it here

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()


def _unlink_worker(conn: Connection, parent_end: Connection) -> None:
    parent_end.close()  # or the parent closing its end would never reach us as EOF
    # Several unlinks at once: on ext4 most of an unlink's time (freeing the inode and its
    # blocks, the journal) is spent outside the directory's lock, so threads overlap it. One
    # directory of 100,000 files: 6 s one at a time (as find does), 1.5 s with 16 threads.
    with ThreadPoolExecutor(_UNLINK_THREADS, thread_name_prefix="unlink") as pool:
        try:
            while True:
                paths = conn.recv()
                conn.send([e for part in pool.map(_unlink_all, _split(paths)) for e in part])
        except EOFError:
            pass


def _split(paths: list[str | None]) -> list[list[str | None]]:
    """Consecutive slices, one per thread, so the results come back in the paths' order."""
    step = -(-len(paths) // _UNLINK_THREADS) or 1
    return [paths[i : i + step] for i in range(0, len(paths), step)]


def _unlink_all(paths: list[str | None]) -> list[str | None]:
    return [_unlink(p) for p in paths]


def _vault_problem(where: Path, shared: bool) -> str | None:
    if not where.is_dir():
        return f"the vault directory {where} is missing"
    if shared and not (where / MARKER).exists():
        return f"{where} has no {MARKER}: a shared vault that is not mounted?"
    return None


def _unlink(path: str | None) -> str | None:
    """None when the file is gone (or already was); else why it could not be removed."""
    if not path:
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{exc.strerror} ({path})"
    return None
