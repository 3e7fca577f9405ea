"""The parts of callconsent a command or the daemon works with, opened from the config."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy import select

from callconsent.config import Config
from callconsent.privileges import invoked_by
from recorder.finalize.spool import Spool
from recorder.live.callbook import CallBook
from recorder.live.prompts import PromptCatalog
from recorder.store import migrate
from recorder.store.audit import AuditContext, os_user
from recorder.store.db import Database
from recorder.store.ledger import Ledger, RecordingSink
from recorder.store.models import Call
from recorder.store.numbers import SECRET_NAME, NumberProtector
from recorder.vault.keydir import KeyDir

log = logging.getLogger("callconsent")


class SchemaOutOfDate(Exception):
    """The database schema is older than this code and is not ours to upgrade implicitly."""


class NumberSecretMissing(Exception):
    """The key directory lacks the number secret this host's calls were hashed under."""


@dataclass
class App:
    config: Config
    db: Database
    keydir: KeyDir
    spool: Spool
    numbers: NumberProtector
    audit_ctx: AuditContext
    ledger: Ledger
    prompts: PromptCatalog
    calls: CallBook

    @classmethod
    def open(cls, config: Config, *, sink: RecordingSink | None = None) -> App:
        """Create what is missing (data dir, key dir 0700, spool 2770, the SQLite schema) and
        check what exists. A PostgreSQL schema is upgraded only by ``callconsent db upgrade``:
        several PBX hosts starting at once must not race to migrate a shared database."""
        data_dir = config.data_dir
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o750)
        keydir = KeyDir(config.key_dir)
        keydir.ensure()
        spool = Spool(config.spool_dir)
        spool.ensure()
        db = Database(config.database_url)
        ensure_schema(db)
        numbers = NumberProtector(
            number_secret(keydir, db, config.daemon.node), config.numbers.default_region
        )
        ctx = AuditContext(node=config.daemon.node, os_user=audit_os_user())
        ledger = Ledger(db, numbers, ctx, sink=sink)
        prompts = PromptCatalog(config.prompt_dir)
        app: App
        calls = CallBook(ledger, lambda: app.config.policies, prompts)
        app = cls(config, db, keydir, spool, numbers, ctx, ledger, prompts, calls)
        return app

    def close(self) -> None:
        self.db.dispose()


def number_secret(keydir: KeyDir, db: Database, node: str) -> bytes:
    """The number secret, created on first use, but never anew for a host whose calls were
    hashed under one: a key directory unmounted or unreadable at start-up would otherwise get a
    new secret silently, and every earlier caller's number could no longer be found."""
    if not (keydir.path / SECRET_NAME).exists():
        with db.read() as s:
            hashed = s.scalar(
                select(Call.id).where(Call.node == node[:64], Call.number_key.is_not(None)).limit(1)
            )
        if hashed is not None:
            raise NumberSecretMissing(
                f"the key directory {keydir.path} has no {SECRET_NAME}, but this host's calls "
                "in the store were hashed under one: is the key directory mounted and readable "
                "by the daemon's account? Restore it (or its backup); a new secret would make "
                "every earlier caller's number unfindable"
            )
    return keydir.secret(SECRET_NAME)


def audit_os_user() -> str:
    """The OS account in the audit log: ours, and who started us when root switched to it."""
    invoker = invoked_by()
    return os_user() if invoker is None else f"{os_user()} (for {invoker})"[:64]


def ensure_schema(db: Database) -> None:
    current, head = migrate.current_revision(db), migrate.head_revision()
    if current == head:
        return
    if db.dialect == "sqlite":
        log.info("database_upgrade", extra={"kv": {"from": current or "empty", "to": head}})
        migrate.upgrade(db)
        _share_sqlite_files(db)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, this code needs {head}: "
        "run `callconsent db upgrade` once (from one host)"
    )


def _share_sqlite_files(db: Database) -> None:
    """Root running the CLI must not leave a database the daemon's account cannot write."""
    path = db.engine.url.database
    if os.geteuid() != 0 or not path:
        return
    owner = os.stat(os.path.dirname(os.path.abspath(path)))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chown(path + suffix, owner.st_uid, owner.st_gid)
