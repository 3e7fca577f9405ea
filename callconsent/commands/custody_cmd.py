"""``callconsent recordings hold | unhold | delete``: legal hold, and deletion by a DPO.
Registered into the ``recordings`` command group."""

from __future__ import annotations

import argparse

from callconsent.app import App
from callconsent.authz import authorized_app
from callconsent.commands.keys_cmd import add_secret_args, read_secret_first, unlock
from callconsent.errors import CommandError
from callconsent.recordings import custody
from recorder.governance.custody import CustodyError


def register_actions(cmds: argparse._SubParsersAction) -> None:
    h = cmds.add_parser(
        "hold",
        help="put a recording under legal hold (dpo/admin; needs the private keys)",
        description="Re-wrap the recording's data key to the hold key, then mark it held: it "
        "survives every purge and erasure, and the destruction of its epoch's key.",
    )
    u = cmds.add_parser("unhold", help="release a legal hold (dpo/admin)")
    d = cmds.add_parser(
        "delete",
        help="delete a recording's audio now (dpo/admin; refused while held)",
    )
    for p in (h, u, d):
        p.add_argument("id")
        p.add_argument("--reason", required=True, help="why (kept in the audit log)")
        p.add_argument("--actor", required=True, help="a dpo or admin from [actors]")
    add_secret_args(h)
    h.set_defaults(func=hold, acts_as_daemon=True, before_switch=read_secret_first)
    u.set_defaults(func=unhold, acts_as_daemon=True)
    d.set_defaults(func=delete, acts_as_daemon=True)


def _run(args: argparse.Namespace, permission: str, act) -> None:  # type: ignore[no-untyped-def]
    with authorized_app(args, permission, "recording", args.id) as app:
        try:
            act(app)
        except CustodyError as exc:
            raise CommandError(str(exc)) from None


def hold(args: argparse.Namespace) -> int:
    def act(app: App) -> None:
        done = custody(app).hold(args.id, unlock(app, args), actor=args.actor, reason=args.reason)
        print(f"{args.id}: {'held' if done else 'already held'}")

    _run(args, "recording.hold", act)
    return 0


def unhold(args: argparse.Namespace) -> int:
    def act(app: App) -> None:
        done = custody(app).unhold(args.id, actor=args.actor, reason=args.reason)
        print(f"{args.id}: {'released' if done else 'was not held'}")

    _run(args, "recording.hold", act)
    return 0


def delete(args: argparse.Namespace) -> int:
    def act(app: App) -> None:
        state = custody(app).delete(args.id, actor=args.actor, reason=args.reason)
        print(f"{args.id}: {state}")

    _run(args, "recording.delete", act)
    return 0
