"""Retention purge of 100,000 expired recordings on SQLite, against the purge PBX projects ship
today, ``find DIR -mtime +N -delete``, over an identical tree, in the same run.

Ours does more: it finds the expired rows in the store, unlinks the files, fsyncs the
directory, marks every row purged and appends one hash-chained audit row each. Both sides run
as a child process (``callconsent retention run`` is the real CLI), on warm page caches.
Goals: ours <= 30 s, and ratio = find's time / ours >= 1.0.

    python bench/purge.py [--quick] [--count N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
import daemon_cli


def build(root: Path, count: int) -> tuple[Path, Path]:
    """A store with ``count`` expired recordings and their files, and a twin tree for find."""
    import sqlalchemy as sa

    from callconsent import config
    from callconsent.app import App
    from recorder.store.models import Recording

    cfg_path = root / "callconsent.toml"
    cfg_path.write_text('[daemon]\ndata_dir = "data"\nnode = "bench"\n[metrics]\nenabled = false\n')
    app = App.open(config.load(cfg_path))
    vault = app.config.vault_dir
    vault.mkdir(mode=0o750, parents=True, exist_ok=True)
    twin = root / "find-tree"
    twin.mkdir()
    call = app.ledger.open_call(pbx="import", pbx_call_id="bench", campaign="default")
    old = datetime.now(UTC) - timedelta(days=40)
    body = os.urandom(2048)  # small files: the cost is per file, not per byte
    stamp = old.timestamp()
    rows = []
    for _ in range(count):
        rid = str(uuid.uuid4())
        for d in (vault, twin):
            path = d / f"{rid}.ccrec"
            with open(path, "wb") as f:
                f.write(body)
            os.utime(path, (stamp, stamp))
        rows.append(
            {
                "id": rid,
                "call_id": call.id,
                "state": "encrypted",
                "spool_path": "-",
                "format": "wav",
                "channels": 1,
                "retention_category": "default",
                "started_at": old - timedelta(days=30),
                "expires_at": old,
                "ciphertext_path": str(vault / f"{rid}.ccrec"),
                "legal_hold": False,
            }
        )
    with app.db.write() as s:
        for i in range(0, len(rows), 5000):
            s.execute(sa.insert(Recording), rows[i : i + 5000])
    app.close()
    os.sync()
    return cfg_path, twin


def hand_over(root: Path) -> dict[str, object]:
    """As root, the CLI runs as the daemon's account (as in production) and gets the tree the
    bench built; the ``subprocess.run`` arguments that run a command as that account."""
    user = daemon_cli.daemon_user("bench/purge.py")
    if user is None:
        return {}
    os.chown(root, user.pw_uid, user.pw_gid)
    for where, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(where, name), user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def timed(cmd: list[str], **as_account: object) -> tuple[float, float, str]:
    """Wall seconds, the child's peak RSS in MiB, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **as_account)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {done.stdout}\n{done.stderr}")
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return wall, peak, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 recordings (under a minute)")
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    count = args.count or (10_000 if args.quick else 100_000)
    root = daemon_cli.workdir("bench-purge")  # one the daemon's account can enter
    try:
        t0 = time.perf_counter()
        cfg, twin = build(root, count)
        as_account = hand_over(root / "data")
        setup = time.perf_counter() - t0
        ours, ours_rss, out = timed(
            [
                sys.executable,
                "-m",
                "callconsent",
                "--config",
                str(cfg),
                "retention",
                "run",
                "--json",
            ],
            **as_account,
        )
        report = json.loads(out)
        theirs, _, _ = timed(["find", str(twin), "-type", "f", "-mtime", "+30", "-delete"])
        left_ours = len(list((root / "data" / "recordings").glob("*.ccrec")))
        left_find = len(list(twin.iterdir()))
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{root / 'data' / 'callconsent.db'}")
        with engine.connect() as conn:
            audited = conn.execute(
                sa.text("select count(*) from audit_log where action = 'recording.purged'")
            ).scalar_one()
            purged = conn.execute(
                sa.text("select count(*) from recordings where state = 'purged'")
            ).scalar_one()
        engine.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = theirs / ours
    print(f"purge of {count:,} expired recordings (setup {setup:.1f} s)")
    print(f"{'':32}{'seconds':>10}{'files/s':>12}{'left':>8}")
    print(f"{'callconsent retention run':32}{ours:>10.2f}{count / ours:>12,.0f}{left_ours:>8}")
    print(f"{'find -mtime +30 -delete':32}{theirs:>10.2f}{count / theirs:>12,.0f}{left_find:>8}")
    print(
        f"ratio (find / ours): {ratio:.2f}; rows purged {purged:,}, audit rows {audited:,}; "
        f"peak RSS {ours_rss:.0f} MiB"
    )
    ok = report["purged"] == count == purged == audited and left_ours == 0
    print(
        json.dumps(
            {
                "bench": "purge",
                "recordings": count,
                "seconds": round(ours, 2),
                "find_seconds": round(theirs, 2),
                "ratio": round(ratio, 2),
                "goal_seconds": 30,
                "goal_ratio": 1.0,
                "all_purged_and_audited": ok,
                "peak_rss_mib": round(ours_rss, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
