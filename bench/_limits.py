"""The limits the whole daemon is compared with, in the same run (``bench/daemon_load.py``):

* the FastAGI server alone: the same number of sessions through ``bench/agi_load.py``'s
  consent script (no store, no finalizer), all at once, in its own process;
* the store's floor: the rows one consent call leaves in the store (call, consent evidence,
  recording, its audit rows) inserted with bare SQLAlchemy Core, one transaction per call, on
  SQLite with the daemon's pragmas (``synchronous=FULL``, WAL), as issue 15 defines it.

And each part of a call alone at the steady round's own arrival rate (``rate``), because a
part costs more per call when calls come one at a time than when they come together (each
one wakes its thread on its own, docs/performance.md):

* the FastAGI server alone, the calls arriving at ``rate`` and listening to the prompt;
* the same rows through the DB-API cursor as the store writer runs its statements
  (``recorder.store.prepared``), one transaction per call: what the store must do at least,
  without the writer's thread and queue (SQLAlchemy's execution layer costs more than SQLite);
* the format's minimum work on each call's recording (``bench/finalize.floor`` with the key
  slot: HPKE seal of the data key, SHA-256 of both sides, GCM segments, write, fsync, unlink).

Their sum is what a daemon doing the three parts, and nothing else (no AMI, no thread
between them), would cost at that rate on this machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import agi_load
from _common import ROOT, cpu_seconds, free_port, start_server

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AUDIT_ROWS_PER_CALL = 6  # call.opened, consent.decision, recording.started/closed/encrypted, …


def _paced(count: int, rate: float) -> Iterator[int]:
    """0 … count-1, each at its slot of ``rate`` a second (at once with rate 0); the sleeps
    cost no CPU, so the CPU measured is the work's."""
    start = time.perf_counter()
    for i in range(count):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        yield i


def _cpu(work: Callable[[], None]) -> float:
    """This process's CPU seconds (every thread) for ``work``."""
    before = time.process_time()
    work()
    return time.process_time() - before


def fastagi_alone(sessions: int, rate: float = 0.0, prompt_s: float = 0.0) -> dict[str, float]:
    """All at once (``rate`` 0, no prompt), or arriving at ``rate`` a second, each caller
    listening to the prompt for ``prompt_s`` before pressing 1."""
    port = free_port()
    proc = start_server(agi_load.__file__, "ours", port)
    try:
        env = agi_load.captured_environment()
        asyncio.run(agi_load.load(port, min(100, sessions), 0, env))  # warm-up
        cpu = cpu_seconds(proc.pid)
        ramp_s = sessions / rate if rate else 0.0
        out = asyncio.run(agi_load.load(port, sessions, round(prompt_s * 1000), env, ramp_s=ramp_s))
        time.sleep(0.2)  # the server's last replies
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.kill()
        proc.wait()
    return {
        "sessions": out["sessions"],
        "failures": out["failures"],
        "sessions_per_s": out["sessions_per_s"],
        "turnaround_p99_ms": out["turnaround_p99_ms"],
        "cpu_ms_per_call": round(cpu * 1000 / max(out["sessions"], 1), 3),
    }


def _call_rows(i: int, seq: int, prev: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One call's rows (call, consent evidence, recording; its audit rows chained on
    ``seq``/``prev``)."""
    now = datetime.now(UTC)
    call_id, rec_id = str(uuid.uuid4()), str(uuid.uuid4())
    audit = []
    for _ in range(AUDIT_ROWS_PER_CALL):
        seq += 1
        digest = hashlib.sha256(f"{prev}{seq}".encode()).hexdigest()
        audit.append(
            {
                "seq": seq, "at": now, "node": "bench", "os_user": "callconsent",
                "actor": "callconsent", "action": "call.opened", "subject_type": "call",
                "subject_id": call_id, "details": '{"campaign":"sales"}',
                "prev_hash": prev, "hash": digest,
            }
        )  # fmt: skip
        prev = digest
    rows = {
        "call": {
            "id": call_id, "pbx": "asterisk", "node": "bench",
            "pbx_call_id": f"floor.{i}", "campaign": "sales", "direction": "inbound",
            "number_kind": "e164", "number_key": prev, "number_enc": b"x" * 60,
            "consent_status": "granted", "started_at": now,
        },
        "consent": {
            "id": str(uuid.uuid4()), "call_id": call_id, "kind": "decision",
            "status": "granted", "method": "prompt", "legal_basis": "consent",
            "digits": [{"digit": "1"}], "prompts": [{"prompt_id": "consent"}],
            "attempts": 1, "policy": {"campaign": "sales"}, "decided_at": now,
        },
        "recording": {
            "id": rec_id, "call_id": call_id, "state": "recording",
            "spool_path": f"/var/spool/{rec_id}.wav", "format": "wav",
            "channels": 1, "started_at": now,
        },
    }  # fmt: skip
    return rows, audit


def _calls(
    count: int, rate: float
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], tuple[int, str]]]:
    """Each call's rows at its slot of ``rate``, its audit rows chained on the ones before,
    and the chain's new tail."""
    seq, prev = 0, "0" * 64
    for i in _paced(count, rate):
        rows, audit = _call_rows(i, seq, prev)
        seq, prev = audit[-1]["seq"], audit[-1]["hash"]
        yield rows, audit, (seq, prev)


def store_floor(calls: int, rate: float = 0.0, *, cursor: bool = False) -> dict[str, float]:
    """One transaction per call: with SQLAlchemy Core (``Connection.execute``, issue 15's
    limit), or with ``cursor`` through the DB-API cursor as the store writer runs its
    statements (:class:`recorder.store.prepared.Prepared`)."""
    from sqlalchemy import bindparam, insert, update
    from sqlalchemy.engine import Connection

    from recorder.store import migrate
    from recorder.store.db import Database, sqlite_url
    from recorder.store.models import AuditEntry, AuditHead, Call, ConsentRecord, Recording
    from recorder.store.prepared import Prepared

    tables = {"call": Call, "consent": ConsentRecord, "recording": Recording}
    prepared = {name: Prepared(insert(model.__table__)) for name, model in tables.items()}
    audit_insert = Prepared(insert(AuditEntry.__table__))
    move_head = Prepared(
        update(AuditHead.__table__).values(seq=bindparam("b_seq"), hash=bindparam("b_hash"))
    )

    class OnCursor:  # what Prepared runs on (recorder.store.prepared.Batchlike)
        def __init__(self, conn: Connection) -> None:
            self.conn, self.cursor = conn, conn.connection.cursor()

    with tempfile.TemporaryDirectory(prefix="callconsent-floor-") as tmp:
        db = Database(sqlite_url(Path(tmp) / "floor.db"))
        migrate.upgrade(db)

        def with_core() -> None:
            for rows, audit, (seq, prev) in _calls(calls, rate):
                with db.engine.begin() as conn:  # each statement built here, as before
                    for name, row in rows.items():
                        conn.execute(insert(tables[name]), row)
                    conn.execute(insert(AuditEntry), audit)
                    conn.execute(update(AuditHead).values(seq=seq, hash=prev))

        def with_cursor() -> None:
            with db.engine.connect() as conn:
                b = OnCursor(conn)  # the connection runs in autocommit: BEGIN/COMMIT ourselves
                for rows, audit, (seq, prev) in _calls(calls, rate):
                    b.cursor.execute("BEGIN IMMEDIATE")
                    for name, row in rows.items():
                        prepared[name].run(b, row)
                    audit_insert.many(b, audit)
                    move_head.run(b, {"b_seq": seq, "b_hash": prev})
                    b.cursor.execute("COMMIT")

        start = time.perf_counter()
        cpu = _cpu(with_cursor if cursor else with_core)
        wall = time.perf_counter() - start
        with db.engine.connect() as conn:  # every call's rows are there, its chain's tail moved
            stored = conn.exec_driver_sql("SELECT count(*) FROM calls").scalar()
            tail = conn.exec_driver_sql("SELECT seq FROM audit_head").scalar()
        db.dispose()
        assert (stored, tail) == (calls, calls * AUDIT_ROWS_PER_CALL), (stored, tail)
    return {
        "calls": calls,
        "calls_per_s": round(calls / wall, 1),
        "ms_per_call": round(wall * 1000 / calls, 3),
        "cpu_ms_per_call": round(cpu * 1000 / calls, 3),
    }


def format_floor(recordings: int, rate: float, wav: bytes) -> dict[str, float]:
    """The format's minimum work on ``recordings`` files of ``wav`` (the bench's recording),
    one at each slot of ``rate``; the files are written before, outside the CPU measured."""
    from cryptography.hazmat.primitives.asymmetric import x25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from finalize import floor

    public = x25519.X25519PrivateKey.generate().public_key()
    public_key = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    with tempfile.TemporaryDirectory(prefix="callconsent-format-floor-", dir="/var/tmp") as tmp:
        spool, vault = Path(tmp) / "spool", Path(tmp) / "vault"
        spool.mkdir()
        vault.mkdir()
        paths = [spool / f"{i}.wav" for i in range(recordings)]
        for p in paths:
            p.write_bytes(wav)

        def work() -> None:
            for i in _paced(recordings, rate):
                floor(paths[i], vault / f"{i}.ccrec", public_key)

        cpu = _cpu(work)
        left = sum(1 for _ in os.scandir(spool))
    return {
        "recordings": recordings,
        "bytes": len(wav),
        "left_in_spool": left,
        "cpu_ms_per_call": round(cpu * 1000 / recordings, 3),
    }
