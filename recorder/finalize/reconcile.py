"""Reconciliation: what the spool, the vault and the store say, made to agree.

Runs at the finalizer's start-up (``full``: the vault too) and every ``reconcile_interval_s``.
It removes temp files whose writer died (live writers hold a ``flock`` on theirs), queues every
recording of this host that is ``closed`` (a close we heard while down, or a crash mid-way) or
``recording`` with its call over (a close we never heard, or a PBX that crashed), every spool
file of an encrypted, discarded or purged recording, and (``full``) every ciphertext of a
recording that is not encrypted. An unknown spool file is kept and reported, never deleted.
It also checks how far ahead the key epochs reach, and counts the plaintext left past the
retry window (:mod:`recorder.finalize.alarms`).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from recorder import metrics
from recorder.finalize.alarms import Alarms
from recorder.finalize.spool import Spool
from recorder.store.db import Database, in_batches
from recorder.store.models import Call, Recording, RecordingState
from recorder.vault.directory import Vault, unused_temp
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import KeyStore

log = logging.getLogger("callconsent.finalizer")


class Finalizing(Protocol):
    """What reconciliation needs of the finalizer (it is given one; it never imports it, so
    the finalizer may run it without an import cycle)."""

    db: Database
    ctx: Any  # the ledger's context: ``node`` names this host
    spool: Spool
    vault: Vault
    keys: KeyStore
    retention: RetentionRule
    settings: Any  # ``runway_warning_weeks``, ``overdue_after_s``
    stats: dict[str, float]
    runway_warned_at: float

    alarms: Alarms

    def submit(self, recording_id: str) -> None: ...


S = RecordingState
WARN_EVERY_S = 3600.0


def reconcile(fin: Finalizing, *, full: bool = False) -> dict[str, int]:
    work: set[str] = set()
    on_disk: set[str] = set()
    temps = fin.vault.temp_files()  # the temp directory; the whole vault only at start-up:
    in_vault: set[str] = set()
    if full:
        in_vault, old_temps = fin.vault.listing()  # one pass over what it keeps
        temps += old_temps
    with os.scandir(fin.spool.path) as entries:  # the spool: what is being recorded
        for e in entries:
            if p := Spool.parse_name(e.name):
                on_disk.add(p[0])
            elif e.name.startswith(".import-") and e.name.endswith(".tmp"):
                temps.append(Path(e.path))
    for tmp in temps:
        if unused_temp(tmp):  # a writer that died; a live one holds its flock
            tmp.unlink(missing_ok=True)
    with fin.db.read() as s:
        pending = s.execute(
            select(Recording.id)
            .join(Call, Call.id == Recording.call_id)
            .where(
                Call.node == fin.ctx.node[:64],
                # a recording still open on a call that goes on is left alone by process():
                # not queueing the (thousands of) calls in progress keeps this pass flat
                or_(
                    Recording.state == S.CLOSED,
                    and_(Recording.state == S.RECORDING, Call.ended_at.is_not(None)),
                ),
            )
        ).scalars()
        work.update(pending)
        known = _states(s, on_disk)
        for rid in sorted(on_disk - set(known)):
            log.warning("spool_file_unknown", extra={"kv": {"recording": rid, "kept": True}})
        work.update(rid for rid, st in known.items() if st != S.RECORDING)
        if full:
            kept = _states(s, in_vault)
            work.update(r for r, st in kept.items() if st != S.ENCRYPTED)
    for rid in sorted(work):
        fin.submit(rid)
    check_runway(fin)
    fin.alarms.check_overdue(fin.db, fin.ctx.node, fin.settings.overdue_after_s)
    return {"queued": len(work)}


def check_runway(fin: Finalizing) -> float:
    """Days the epochs reach past what a recording made now needs; warns below the limit."""
    runway = fin.keys.runway(datetime.now(UTC), fin.retention.longest_days)
    days = runway / timedelta(days=1)
    fin.stats["epoch_runway_days"] = days
    metrics.KEY_EPOCH_WEEKS_LEFT.set(days / 7)
    low = runway < timedelta(weeks=fin.settings.runway_warning_weeks)
    if low and time.monotonic() - fin.runway_warned_at >= WARN_EVERY_S:
        fin.runway_warned_at = time.monotonic()
        log.warning(
            "key_epochs_running_low",
            extra={
                "kv": {
                    "runway_days": round(days, 1),
                    "needed_weeks": fin.settings.runway_warning_weeks,
                    "fix": "callconsent keys rotate",
                }
            },
        )
    return days


def _states(session: Session, ids: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in in_batches(sorted(ids)):
        rows = session.execute(select(Recording.id, Recording.state).where(Recording.id.in_(part)))
        out.update({rid: state for rid, state in rows})
    return out
