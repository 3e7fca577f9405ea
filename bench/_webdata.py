"""The store bench/web.py measures: N calls and M recordings on SQLite, one of them a real
one-hour recording encrypted by the finalizer (its plaintext kept beside for the plain-file
limit), a supervisor with a password and an API token, and the key store's passphrase in a
0600 file for `callconsent web`.

Built once per (schema revision, N, M) under bench/out/ (rows bulk-inserted with SQLAlchemy
Core executemany), then reused: ``ready.json`` is written last and says what is in it."""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

USER, PASSWORD = "bench", "a long bench password"
DPO = "benchdpo"  # the audit page's reader (same password)
AGENTS, CAMPAIGNS = 200, 20
CONSENT = [("granted", 60), ("declined", 15), ("no_input", 10), ("withdrawn", 5)]
CONSENT += [("not_required", 10)]
BATCH = 20_000


@dataclass
class Dataset:
    root: str
    config: str
    calls: int
    recordings: int
    long_recording: str  # the one-hour recording's id
    long_size: int  # its plaintext WAV's bytes
    plain_dir: str  # holds long.wav, the same plaintext
    token: str  # the supervisor's API token
    number_key: str  # a number that has calls (the nk filter)
    agent: str
    campaign: str
    since: str  # a week in the middle of the data
    until: str
    audit_rows: int  # the audit log's rows
    built_s: float

    @property
    def plain_path(self) -> Path:
        return Path(self.plain_dir) / "long.wav"


def dataset(calls: int, recordings: int, long_seconds: float) -> Dataset:
    from recorder.store import migrate

    # "a1": one audit row a call (the pages that read the whole log: the audit page's check);
    # "a2": written by the daemon's actor, and the log's statistics taken after them
    name = f"web-{migrate.head_revision()}-{calls}c-{recordings}r-{int(long_seconds)}s-a2"
    root = ROOT / "bench" / "out" / name
    ready = root / "ready.json"
    if ready.exists():
        return Dataset(**json.loads(ready.read_text()))
    if root.exists():
        shutil.rmtree(root)  # a build that did not finish
    root.mkdir(parents=True)
    started = time.monotonic()
    built = _build(root, calls, recordings, long_seconds)
    built.built_s = round(time.monotonic() - started, 1)
    ready.write_text(json.dumps(asdict(built), indent=1))
    return built


def _build(root: Path, n_calls: int, n_recordings: int, long_seconds: float) -> Dataset:
    from browser_rig import add_call, tone_wav, write_config
    from recstore import make_rig

    from callconsent import config as config_mod
    from callconsent.app import App
    from web.accounts import Accounts

    config = write_config(root)
    app = App.open(config_mod.load(config))
    try:
        rig = make_rig(app, weeks=60)
        long = add_call(app, agent="agent000", number="+4915100000000", seconds=long_seconds)
        plain = root / "plain"
        plain.mkdir()
        tone_wav(plain / "long.wav", long_seconds)
        accounts = Accounts(app.db, app.audit_ctx)
        accounts.add(USER, "supervisor", PASSWORD, actor="bench")
        accounts.add(DPO, "dpo", PASSWORD, actor="bench")
        _, token = accounts.create_token(USER, "bench", 366, actor="bench")
        epoch = rig.keys.store.epochs()[0].id
        facts = _bulk_rows(app, n_calls - 1, n_recordings - 1, epoch)
        audit_rows = _audit_rows(app, n_calls)
    finally:
        app.close()
    return Dataset(
        root=str(root),
        config=str(config),
        calls=n_calls,
        recordings=n_recordings,
        long_recording=long.recording_id,
        long_size=long.wav_size,
        plain_dir=str(plain),
        token=token,
        audit_rows=audit_rows,
        built_s=0.0,
        **facts,
    )


def _bulk_rows(app: object, n_calls: int, n_recordings: int, epoch: str) -> dict[str, str]:
    """Synthetic calls over the last year (a recording on every k-th), by Core executemany."""
    import sqlalchemy as sa

    from recorder.store.models import Call, Recording

    rnd = random.Random(16)
    numbers = app.numbers  # type: ignore[attr-defined]
    distinct = max(1, min(100_000, n_calls // 10))
    protected = [numbers.protect(f"+49151{10_000_000 + i:08d}") for i in range(distinct)]
    statuses = [s for s, weight in CONSENT for _ in range(weight)]
    now = datetime.now(UTC) - timedelta(minutes=1)
    step = timedelta(days=365) / max(n_calls, 1)
    every = max(1, n_calls // max(n_recordings, 1))
    engine = app.db.engine  # type: ignore[attr-defined]
    calls_t, recs_t = Call.__table__, Recording.__table__
    with engine.begin() as conn:
        call_rows: list[dict[str, object]] = []
        rec_rows: list[dict[str, object]] = []
        made_recordings = 0
        for i in range(n_calls):
            at = now - step * (i + 1)
            number = protected[i % distinct]
            cid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            agent = None if i % 10 == 9 else f"agent{rnd.randrange(AGENTS):03d}"
            call_rows.append(
                {
                    "id": cid,
                    "pbx": "asterisk",
                    "node": "bench",
                    "pbx_call_id": f"b{i}",
                    "campaign": f"campaign{rnd.randrange(CAMPAIGNS):02d}",
                    "direction": "outbound" if rnd.random() < 0.3 else "inbound",
                    "agent": agent,
                    "number_kind": number.kind.value,
                    "number_key": number.key,
                    "number_enc": number.enc,
                    "consent_status": rnd.choice(statuses),
                    "started_at": at,
                    "ended_at": at + timedelta(seconds=90),
                }
            )
            if i % every == 0 and made_recordings < n_recordings:
                made_recordings += 1
                rid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
                rec_rows.append(_recording_row(rid, cid, at, epoch))
            if len(call_rows) >= BATCH:  # recordings after their calls (foreign key)
                conn.execute(sa.insert(calls_t), call_rows)
                call_rows.clear()
                if rec_rows:
                    conn.execute(sa.insert(recs_t), rec_rows)
                    rec_rows.clear()
        if call_rows:
            conn.execute(sa.insert(calls_t), call_rows)
        if rec_rows:
            conn.execute(sa.insert(recs_t), rec_rows)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    middle: date = (now - timedelta(days=180)).date()
    return {
        "number_key": protected[distinct // 2].key or "",
        "agent": "agent042",
        "campaign": "campaign07",
        "since": middle.isoformat(),
        "until": (middle + timedelta(days=6)).isoformat(),
    }


def _audit_rows(app: object, n: int) -> int:
    """``n`` more rows at the tail of the audit chain (``audit.append_many``: hashes and all,
    as the daemon writes them, by its actor, 5,000 a transaction); the whole log's rows.
    Then SQLite's statistics of the log again: taken before these rows (``_bulk_rows``), they
    told the planner of a log of a few dozen rows, and it walked the whole log by its primary
    key rather than read an index of retention's rows (none)."""
    from recorder.store import audit
    from recorder.store.calljobs import SYSTEM_ACTOR
    from recorder.store.models import AuditHead

    db, ctx = app.db, app.audit_ctx  # type: ignore[attr-defined]
    actions = ("call.opened", "consent.granted", "recording.started", "recording.encrypted")
    for start in range(0, n, 5000):
        rows = [
            {
                "actor": SYSTEM_ACTOR,
                "action": actions[i % len(actions)],
                "subject_type": "call",
                "subject_id": str(uuid.UUID(int=i, version=4)),
                "details": {"campaign": f"campaign{i % CAMPAIGNS:02d}"},
            }
            for i in range(start, min(n, start + 5000))
        ]
        with db.write() as s:
            audit.append_many(s, ctx, rows)
    if db.dialect == "sqlite":
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE audit_log")
    with db.read() as s:
        head = s.get(AuditHead, 1)
        return head.seq if head else 0


def _recording_row(rid: str, cid: str, at: datetime, epoch: str) -> dict[str, object]:
    return {
        "id": rid,
        "call_id": cid,
        "state": "encrypted",
        "spool_path": f"/nonexistent/spool/{rid}.wav",
        "format": "wav",
        "sample_rate": 8000,
        "channels": 1,
        "retention_category": "default",
        "started_at": at,
        "closed_at": at + timedelta(seconds=90),
        "duration_ms": 90_000,
        "plaintext_size": 1_440_044,
        "ciphertext_path": f"/nonexistent/vault/{rid}.ccrec",
        "key_epoch": epoch,
        "encrypted_at": at + timedelta(seconds=95),
        "expires_at": at + timedelta(days=400),
        "legal_hold": False,
    }
