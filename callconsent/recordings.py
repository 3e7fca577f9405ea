"""The recorder's parts built from the config: the retention rule, the key store and the
finalizer. Shared by the daemon (its ``finalizer`` component) and the CLI commands."""

from __future__ import annotations

from typing import Any

from callconsent.app import App
from callconsent.config import Config
from recorder.finalize.finalizer import Finalizer, FinalizerSettings
from recorder.governance.custody import Custody
from recorder.governance.retention import Retention
from recorder.governance.subjects import Subjects
from recorder.vault.directory import Vault
from recorder.vault.expiry import RetentionRule
from recorder.vault.keystore import KeyStore


def retention_rule(config: Config) -> RetentionRule:
    r = config.retention
    return RetentionRule(r.default_days, r.max_days, dict(r.categories))


def key_store(app: App) -> KeyStore:
    return KeyStore(app.keydir, app.db, app.audit_ctx)


def retention(app: App) -> Retention:
    r = app.config.retention
    return Retention(
        app.db,
        app.audit_ctx,
        key_store(app),
        node=app.config.daemon.node,
        shared_storage=r.shared_storage,
        batch=r.batch,
    )


def custody(app: App) -> Custody:
    return Custody(
        app.db,
        app.audit_ctx,
        key_store(app),
        app.ledger,
        node=app.config.daemon.node,
        shared_storage=app.config.retention.shared_storage,
    )


def subjects(app: App) -> Subjects:
    return Subjects(app.db, app.numbers, app.audit_ctx, custody(app))


def finalizer(
    app: App, *, settings: FinalizerSettings | None = None, **test_hooks: Any
) -> Finalizer:
    """The finalizer, installed as the ledger's sink. Refuses to be built as root (the crash
    tests pass their ``step`` and ``allow_root`` hooks through ``test_hooks``)."""
    r = app.config.recorder
    built = Finalizer(
        app.ledger,
        app.spool,
        Vault(app.config.vault_dir),
        key_store(app),
        retention_rule(app.config),
        settings
        or FinalizerSettings(
            workers=r.workers,
            reconcile_interval_s=r.reconcile_interval_s,
            settle_s=r.settle_s,
            overdue_after_s=r.overdue_after_s,
            spool_full_bytes=r.spool_full_bytes,
            runway_warning_weeks=r.runway_warning_weeks,
        ),
        **test_hooks,
    )
    app.ledger.sink = built
    return built
