"""Who may do what: roles from ``[actors]``, checked before any act on personal data, and
every refusal audited (with the OS user beside the named actor, as every audit row)."""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager

from callconsent import config as config_mod
from callconsent import privileges
from callconsent.app import App
from callconsent.config import Config
from callconsent.errors import CommandError
from recorder.store import audit
from recorder.store.db import Database

#: permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "recording.delete": frozenset({"dpo", "admin"}),
    "recording.hold": frozenset({"dpo", "admin"}),
    "subject.export": frozenset({"dpo", "admin"}),
    "subject.erase": frozenset({"dpo", "admin"}),
    "retention.recompute": frozenset({"dpo", "admin"}),
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
    known = config.actors.get(actor)
    if known is None:
        why = f"unknown actor {actor!r}: name one from [actors] in {config.source}"
    elif known.role not in roles:
        why = f"actor {actor!r} is {known.role}; {permission} needs {' or '.join(sorted(roles))}"
    elif known.os_users and invoking_os_user() not in known.os_users:
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
