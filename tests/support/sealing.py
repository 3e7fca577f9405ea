"""Audit rows for recordings a test wrote straight into the store (fakes made in bulk): each
gets the sealed audit row the daemon would have written, so ``audit verify`` accepts them."""

from __future__ import annotations

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import AuditHead, Recording


def seal_written(db: Database, ids: list[str], ctx: audit.AuditContext | None = None) -> None:
    ctx = ctx or audit.AuditContext(node="pbx-test", os_user="tester")
    with db.write() as s:
        rows = [
            {
                "actor": "test",
                "action": "recording.encrypted",
                "subject_type": "recording",
                "subject_id": rec.id,
                "details": audit.sealed({"fake": True}, rec),
            }
            for rec in (s.get(Recording, rid) for rid in ids)
            if rec is not None
        ]
        if s.get(AuditHead, 1) is None:
            audit.append(s, ctx, actor="test", action="test.start", subject_type="test")
        audit.append_many(s, ctx, rows)
