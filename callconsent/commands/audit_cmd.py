"""``callconsent audit verify``: check the hash chain of the audit log."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from callconsent import config
from recorder.store import audit
from recorder.store.db import Database


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the tamper-evident audit log")
    cmds = p.add_subparsers(dest="audit_command", metavar="ACTION")
    cmds.required = True
    v = cmds.add_parser(
        "verify",
        help="check that no audit row was edited, inserted or removed",
        description="Walk the hash chain from the first row; name every row that breaks it. "
        "Exit status 1 if any does.",
    )
    v.set_defaults(func=verify)
    e = cmds.add_parser(
        "export",
        help="write audit rows as JSON lines, with their hashes",
        description="Write every audit row at or after --since (ISO 8601; default: all) as one "
        "JSON object per line, in chain order, with prev_hash and hash, so the stretch can be "
        "checked and archived outside this database.",
    )
    e.add_argument(
        "--since", type=_when, metavar="ISO8601", help="e.g. 2026-11-01 or 2026-11-01T09:00Z"
    )
    e.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    e.set_defaults(func=export)


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def export(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    db = Database(cfg.database_url)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    rows = 0
    try:
        with db.read() as session:
            for row in audit.export(session, args.since):
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                rows += 1
    finally:
        db.dispose()
        if args.out:
            out.close()
    print(f"exported {rows} audit rows", file=sys.stderr)
    return 0


def verify(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    db = Database(cfg.database_url)
    try:
        with db.read() as session:
            report = audit.verify(session)
    finally:
        db.dispose()
    for seq, problem in report.problems:
        print(f"row {seq}: {problem}")
    verdict = "chain intact" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"audit log: {report.rows} rows, {verdict}")
    return 0 if report.ok else 1
