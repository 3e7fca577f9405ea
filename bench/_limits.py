"""The limits the whole daemon is compared with, in the same run (``bench/daemon_load.py``):

* the FastAGI server alone: the same number of sessions through ``bench/agi_load.py``'s
  consent script (no store, no finalizer), all at once, in its own process;
* the store's floor: the rows one consent call leaves in the store (call, consent evidence,
  recording, its audit rows) inserted with bare SQLAlchemy Core, one transaction per call, on
  SQLite with the daemon's pragmas (``synchronous=FULL``, WAL): what no store code can beat.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import agi_load
from _common import ROOT, cpu_seconds, free_port, start_server

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AUDIT_ROWS_PER_CALL = 6  # call.opened, consent.decision, recording.started/closed/encrypted, …


def fastagi_alone(sessions: int) -> dict[str, float]:
    port = free_port()
    proc = start_server(agi_load.__file__, "ours", port)
    try:
        env = agi_load.captured_environment()
        asyncio.run(agi_load.load(port, min(100, sessions), 0, env))  # warm-up
        cpu = cpu_seconds(proc.pid)
        out = asyncio.run(agi_load.load(port, sessions, 0, env))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.kill()
        proc.wait()
    return {
        "sessions": out["sessions"],
        "sessions_per_s": out["sessions_per_s"],
        "turnaround_p99_ms": out["turnaround_p99_ms"],
        "cpu_ms_per_call": round(cpu * 1000 / max(out["sessions"], 1), 3),
    }


def store_floor(calls: int) -> dict[str, float]:
    from sqlalchemy import insert, update

    from recorder.store import migrate
    from recorder.store.db import Database, sqlite_url
    from recorder.store.models import AuditEntry, AuditHead, Call, ConsentRecord, Recording

    with tempfile.TemporaryDirectory(prefix="callconsent-floor-") as tmp:
        db = Database(sqlite_url(Path(tmp) / "floor.db"))
        migrate.upgrade(db)
        seq, prev = 0, "0" * 64
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
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
            with db.engine.begin() as conn:
                conn.execute(
                    insert(Call),
                    {
                        "id": call_id, "pbx": "asterisk", "node": "bench",
                        "pbx_call_id": f"floor.{i}", "campaign": "sales", "direction": "inbound",
                        "number_kind": "e164", "number_key": digest, "number_enc": b"x" * 60,
                        "consent_status": "granted", "started_at": now,
                    },
                )  # fmt: skip
                conn.execute(
                    insert(ConsentRecord),
                    {
                        "id": str(uuid.uuid4()), "call_id": call_id, "kind": "decision",
                        "status": "granted", "method": "prompt", "legal_basis": "consent",
                        "digits": [{"digit": "1"}], "prompts": [{"prompt_id": "consent"}],
                        "attempts": 1, "policy": {"campaign": "sales"}, "decided_at": now,
                    },
                )  # fmt: skip
                conn.execute(
                    insert(Recording),
                    {
                        "id": rec_id, "call_id": call_id, "state": "recording",
                        "spool_path": f"/var/spool/{rec_id}.wav", "format": "wav",
                        "channels": 1, "started_at": now,
                    },
                )  # fmt: skip
                conn.execute(insert(AuditEntry), audit)
                conn.execute(update(AuditHead).values(seq=seq, hash=prev))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        db.dispose()
    return {
        "calls": calls,
        "calls_per_s": round(calls / wall, 1),
        "ms_per_call": round(wall * 1000 / calls, 3),
        "cpu_ms_per_call": round(cpu * 1000 / calls, 3),
    }
