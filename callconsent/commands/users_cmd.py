"""``callconsent users add | list | disable | enable | passwd | role | token | totp-reset |
import-actors``:
the people who may act on recordings, in the web console, its API and the CLI's ``--actor``.

Passwords come from ``--password-file PATH``, ``$CALLCONSENT_USER_PASSWORD`` or a prompt.
Started as root, a command reads the password first and then acts as the daemon's account.
Changes are audited with ``--actor`` (default: your OS account). ``import-actors`` turns the
deprecated ``[actors]`` config section into users (without passwords: CLI only until
``passwd``)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from callconsent import config
from callconsent.app import App
from callconsent.authz import NotAllowed, named_actor
from callconsent.errors import CommandError
from web.accounts import ROLES, AccountError, Accounts

PASSWORD_ENV = "CALLCONSENT_USER_PASSWORD"  # noqa: S105 - the variable's name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="people who may use the web console, the API and --actor")
    cmds = p.add_subparsers(dest="users_command", metavar="ACTION")
    cmds.required = True
    a = cmds.add_parser("add", help="create a user with a role (and a password for the web)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--no-password", action="store_true", help="CLI only: no web login")
    a.add_argument("--totp", action="store_true", help="require a TOTP code at login too")
    a.set_defaults(func=add)
    ls = cmds.add_parser("list", help="users, roles, state")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_users)
    for verb, helptext in (
        ("disable", "stop a user (ends their sessions, revokes their API tokens)"),
        ("enable", "let a disabled user back in (and lift a lockout)"),
        ("passwd", "set a user's password (ends their sessions, lifts a lockout)"),
    ):
        c = cmds.add_parser(verb, help=helptext)
        c.add_argument("name")
        c.set_defaults(func=globals()[f"_{verb}"])
    tr = cmds.add_parser("totp-reset", help="turn a user's TOTP second factor off (a lost device)")
    tr.add_argument("name")
    tr.set_defaults(func=totp_reset)
    r = cmds.add_parser("role", help="change a user's role")
    r.add_argument("name")
    r.add_argument("role", choices=ROLES)
    r.set_defaults(func=role)
    t = cmds.add_parser("token", help="create, list or revoke a user's personal API tokens")
    t.add_argument("name")
    t.add_argument("--label", default="api")
    t.add_argument("--days", type=int, default=90, help="lifetime (default 90, at most 366)")
    t.add_argument("--list", action="store_true", help="list the user's tokens instead")
    t.add_argument("--revoke", type=int, metavar="TOKEN_ID", help="revoke this token instead")
    t.set_defaults(func=token)
    im = cmds.add_parser(
        "import-actors", help="create a user (no password) for each [actors] entry"
    )
    im.set_defaults(func=import_actors)
    for c in cmds.choices.values():
        c.add_argument("--actor", help="who makes the change (default: your OS account)")
    for c in (a, cmds.choices["passwd"]):
        c.add_argument("--password-file", metavar="PATH", help="read the password from here")
        c.set_defaults(before_switch=read_password_first)
    for c in cmds.choices.values():  # started as root: act as the daemon's account
        c.set_defaults(acts_as_daemon=True)


def _accounts(args: argparse.Namespace) -> tuple[App, Accounts, str]:
    app = App.open(config.load(args.config))
    try:
        actor = named_actor(app, args.actor)
    except NotAllowed:
        app.close()
        raise
    return app, Accounts(app.db, app.audit_ctx), actor


def read_password_first(args: argparse.Namespace) -> None:
    """Started as root: read the password (a root-only --password-file, the terminal) before
    the command switches to the daemon's account."""
    if not getattr(args, "no_password", False):
        args.password = read_password(args)


def read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password", None) is not None:
        return str(args.password)
    if getattr(args, "password_file", None):
        try:
            return Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CommandError(f"--password-file: {exc}") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise CommandError(f"a password is needed: --password-file PATH or ${PASSWORD_ENV}")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CommandError("the passwords differ")
    return first


def _run(args: argparse.Namespace, act) -> int:  # type: ignore[no-untyped-def]
    app, accounts, actor = _accounts(args)
    try:
        return int(act(accounts, actor) or 0)
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    finally:
        app.close()


def add(args: argparse.Namespace) -> int:
    password = None if args.no_password else read_password(args)

    def act(accounts: Accounts, actor: str) -> None:
        secret = accounts.add(args.name, args.role, password, actor=actor, totp=args.totp)
        print(f"{args.name}: added as {args.role}")
        if secret:
            print(f"TOTP secret (enter it in an authenticator app, shown once): {secret}")

    return _run(args, act)


def list_users(args: argparse.Namespace) -> int:
    def act(accounts: Accounts, _actor: str) -> None:
        people = accounts.all()
        if args.json:
            rows = [
                {
                    "name": p.name,
                    "role": p.role,
                    "disabled": p.disabled,
                    "web_login": p.has_password,
                    "totp": p.has_totp,
                    "locked_until": p.locked_until.isoformat() if p.locked_until else None,
                }
                for p in people
            ]
            print(json.dumps(rows, indent=1))
            return
        for p in people:
            state = "disabled" if p.disabled else "enabled"
            extra = ("" if p.has_password else " no-web-login") + (" totp" if p.has_totp else "")
            print(f"{p.name:<24} {p.role:<10} {state}{extra}")
        print(f"{len(people)} user(s)")

    return _run(args, act)


def _disable(args: argparse.Namespace) -> int:
    return _run(args, lambda a, actor: a.set_disabled(args.name, True, actor=actor))


def _enable(args: argparse.Namespace) -> int:
    return _run(args, lambda a, actor: a.set_disabled(args.name, False, actor=actor))


def _passwd(args: argparse.Namespace) -> int:
    password = read_password(args)
    return _run(args, lambda a, actor: a.set_password(args.name, password, actor=actor))


def totp_reset(args: argparse.Namespace) -> int:
    def act(accounts: Accounts, actor: str) -> int:
        if accounts.reset_totp(args.name, actor=actor):
            print(f"{args.name}: TOTP off (they log in with the password; /account turns it on)")
            return 0
        print(f"{args.name} has no TOTP second factor", file=sys.stderr)
        return 1

    return _run(args, act)


def role(args: argparse.Namespace) -> int:
    return _run(args, lambda a, actor: a.set_role(args.name, args.role, actor=actor))


def token(args: argparse.Namespace) -> int:
    def act(accounts: Accounts, actor: str) -> None:
        if args.revoke is not None:
            done = accounts.revoke_token(args.revoke, actor=actor)
            print(f"token {args.revoke}: {'revoked' if done else 'was already revoked'}")
        elif args.list:
            for t in accounts.tokens(args.name):
                state = "revoked" if t.revoked_at else f"expires {t.expires_at:%Y-%m-%d %H:%M}"
                print(f"{t.id:>5}  {t.label:<20} {state}")
        else:
            tid, raw = accounts.create_token(args.name, args.label, args.days, actor=actor)
            print(f"token {tid} for {args.name} (shown once; send it as 'Authorization: Bearer'):")
            print(raw)

    return _run(args, act)


def import_actors(args: argparse.Namespace) -> int:
    def act(accounts: Accounts, actor: str) -> None:
        cfg = config.load(args.config)
        added = 0
        for name, entry in cfg.actors.items():
            if accounts.get(name) is None:
                accounts.add(name, entry.role, None, actor=actor)
                added += 1
                print(f"{name}: added as {entry.role} (no password: `users passwd {name}`)")
        print(f"{added} user(s) added; remove [actors] from {cfg.source} now")

    return _run(args, act)
