"""Who may do what through the CLI: ``--actor`` names a user of the store (``callconsent users``),
whose role is checked before any act on personal data; every refusal is audited (with the OS
user beside the named actor, as every audit row).

``[actors]`` in the config is deprecated: a name found there and not among the users is still
accepted with a warning (run ``callconsent users import-actors`` once to move them); its
``os_users`` still bind the name to OS accounts, for users too. The web console has its own
authorisation module (``web/authz.py``) over the same roles."""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from callconsent import config as config_mod
from callconsent import privileges
from callconsent.app import App
from callconsent.config import Actor, Config
from callconsent.errors import CommandError
from recorder.store import audit
from recorder.store.db import Database
from web.accounts import Accounts, Person

log = logging.getLogger("callconsent")

#: permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "recording.delete": frozenset({"dpo", "admin"}),
    "recording.hold": frozenset({"dpo", "admin"}),
    "subject.export": frozenset({"dpo", "admin"}),
    "subject.erase": frozenset({"dpo", "admin"}),
    "retention.recompute": frozenset({"dpo", "admin"}),
    "retention.force_as_of": frozenset({"admin"}),
    "keys.destroy": frozenset({"dpo", "admin"}),
}


class NotAllowed(CommandError):
    """The named actor may not do this (or is not who the OS account may act as)."""


def invoking_os_user() -> str:
    """The person at the keyboard: the sudo user if any, else the effective account.
    ``SUDO_USER`` is only an environment variable: it counts only when we run as root (as
    sudo leaves us); anyone else could set it to be taken for another person."""
    invoker = privileges.invoked_by()  # root, now acting as the daemon's account
    if invoker is not None:
        return invoker
    sudo = os.environ.get("SUDO_USER")
    if sudo and os.geteuid() == 0:
        return sudo
    return pwd.getpwuid(os.geteuid()).pw_name


def authorize(
    config: Config,
    db: Database,
    ctx: audit.AuditContext,
    *,
    actor: str,
    permission: str,
    subject_type: str,
    subject_id: str | None,
) -> None:
    """Return if ``actor`` may do ``permission``; otherwise audit the refusal and raise."""
    roles = PERMISSIONS[permission]
    user, claimed, role = _lookup(config, db, ctx, actor)
    if role is None:
        why = f"unknown actor {actor!r}: add it with `callconsent users add {actor} --role ROLE`"
    elif user is not None and user.disabled:
        why = f"user {actor!r} is disabled"
    elif role not in roles:
        why = f"actor {actor!r} is {role}; {permission} needs {' or '.join(sorted(roles))}"
    elif claimed and claimed.os_users and invoking_os_user() not in claimed.os_users:
        why = f"OS account {invoking_os_user()!r} may not act as {actor!r}"
    else:
        return
    with db.write() as s:
        audit.append(
            s,
            ctx,
            actor=actor,
            action="authz.refused",
            subject_type=subject_type,
            subject_id=subject_id,
            details={"permission": permission, "reason": why},
        )
    raise NotAllowed(f"refused: {why}")


def _lookup(
    config: Config, db: Database, ctx: audit.AuditContext, actor: str
) -> tuple[Person | None, Actor | None, str | None]:
    """(the user of that name, its deprecated [actors] entry, the role that applies)."""
    user = Accounts(db, ctx).get(actor)
    claimed = config.actors.get(actor)
    if user is None and claimed is not None:
        log.warning(
            "actor_from_config_deprecated",
            extra={"kv": {"actor": actor, "config": config.source}},
        )
        print(
            f"callconsent: warning: actor {actor!r} comes from [actors] in {config.source}, "
            "which is deprecated: run `callconsent users import-actors` once",
            file=sys.stderr,
        )
    return user, claimed, user.role if user else claimed.role if claimed else None


def named_actor(app: App, actor: str | None) -> str:
    """Who an audited command acts as: ``--actor`` when given, which must then name an
    enabled user (or a deprecated ``[actors]`` entry, bound to its ``os_users``); else the OS
    account running the command."""
    if not actor:
        return app.audit_ctx.os_user
    user, claimed, role = _lookup(app.config, app.db, app.audit_ctx, actor)
    if role is None:
        raise NotAllowed(
            f"unknown actor {actor!r}: add it with `callconsent users add {actor} --role ROLE`"
        )
    if user is not None and user.disabled:
        raise NotAllowed(f"user {actor!r} is disabled")
    if claimed and claimed.os_users and invoking_os_user() not in claimed.os_users:
        raise NotAllowed(f"OS account {invoking_os_user()!r} may not act as {actor!r}")
    return actor


@contextmanager
def authorized_app(
    args: argparse.Namespace, permission: str, subject_type: str, subject_id: str | None
) -> Iterator[App]:
    """The app, opened from ``--config``, once ``--actor`` is allowed ``permission``; closed
    at the end of the block whatever happens."""
    app = App.open(config_mod.load(args.config))
    try:
        authorize(
            app.config,
            app.db,
            app.audit_ctx,
            actor=args.actor,
            permission=permission,
            subject_type=subject_type,
            subject_id=subject_id,
        )
        yield app
    finally:
        app.close()
