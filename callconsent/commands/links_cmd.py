"""``callconsent links revoke ID``: end a share link at once (the web console and the API
can do the same)."""

from __future__ import annotations

import argparse

from callconsent import config
from callconsent.app import App
from callconsent.authz import named_actor
from callconsent.errors import CommandError
from web.sharing import ShareLinks, ShareRefused


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("links", help="share links to recordings")
    cmds = p.add_subparsers(dest="links_command", metavar="ACTION")
    cmds.required = True
    r = cmds.add_parser("revoke", help="revoke a share link now (audited)")
    r.add_argument("id", type=int, help="the link's number (shown on the recording's page)")
    r.add_argument("--actor", help="who revokes it (default: your OS account)")
    r.set_defaults(func=revoke, acts_as_daemon=True)


def revoke(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        links = ShareLinks(app.db, app.audit_ctx, max_hours=1)
        done = links.revoke(args.id, actor=named_actor(app, args.actor))
    except ShareRefused as exc:
        raise CommandError(str(exc)) from None
    finally:
        app.close()
    print(f"share link {args.id}: {'revoked' if done else 'was already revoked'}")
    return 0
