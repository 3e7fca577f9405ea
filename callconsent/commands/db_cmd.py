"""``callconsent db upgrade | status | sql``: the metadata schema."""

from __future__ import annotations

import argparse
import sys

from callconsent import config
from recorder.store import migrate
from recorder.store.db import Database


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="the metadata database schema")
    cmds = p.add_subparsers(dest="db_command", metavar="ACTION")
    cmds.required = True
    up = cmds.add_parser(
        "upgrade",
        help="bring the schema to this version (run once, from one host, on PostgreSQL)",
    )
    up.set_defaults(func=upgrade, acts_as_daemon=True)
    st = cmds.add_parser("status", help="print the schema revision and whether it is current")
    st.set_defaults(func=status)
    sql = cmds.add_parser(
        "sql",
        help="print the DDL of every migration for DBAs who apply it themselves",
        description="Print alembic's offline SQL for a dialect; sql/<dialect>.sql is this output.",
    )
    sql.add_argument("--dialect", choices=sorted(migrate.OFFLINE_URLS), required=True)
    sql.set_defaults(func=print_sql)


def upgrade(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    db = Database(cfg.database_url)
    try:
        before = migrate.current_revision(db)
        migrate.upgrade(db)
        after = migrate.current_revision(db)
    finally:
        db.dispose()
    print(
        f"schema {before or 'empty'} -> {after}"
        if before != after
        else f"schema at {after}, current"
    )
    return 0


def status(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    db = Database(cfg.database_url)
    try:
        current, head = migrate.current_revision(db), migrate.head_revision()
    finally:
        db.dispose()
    print(
        f"schema: {current or 'empty'}; this code: {head}; "
        f"{'current' if current == head else 'run callconsent db upgrade'}"
    )
    return 0 if current == head else 1


def print_sql(args: argparse.Namespace) -> int:
    sys.stdout.write(migrate.offline_sql(args.dialect))
    return 0
