"""``callconsent audit verify``: check the hash chain of the audit log."""

from __future__ import annotations

import argparse

from callconsent import config
from recorder import audit
from recorder.db import Database


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
