"""``callconsent record start|pause|resume|stop|discard --call ID``: control the recording of
a call in progress, through the daemon (which holds the call's consent state)."""

from __future__ import annotations

import argparse

from callconsent import config
from callconsent.control import SOCKET_NAME, ControlError, request
from callconsent.errors import CommandError

VERBS = ("start", "pause", "resume", "stop", "discard")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="start, pause, resume, stop or discard the recording of a call in progress",
        description="Act like an agent's feature code on a live call. Start is refused after "
        "a decline, a withdrawal or a discard; discard destroys everything recorded on the "
        "call. Starting from outside the call needs the opt-in AMI user with write=system "
        "on Asterisk (see dialplan/asterisk/README.md).",
    )
    p.add_argument("verb", choices=VERBS)
    p.add_argument(
        "--call",
        required=True,
        metavar="ID",
        help="Asterisk linkedid or FreeSWITCH Channel-Call-UUID",
    )
    p.add_argument("--pbx", choices=("asterisk", "freeswitch"), help="if both run on this host")
    p.add_argument("--actor", help="who asks (recorded in the audit log with your OS account)")
    p.set_defaults(func=record)


def record(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    try:
        reply = request(
            cfg.data_dir / SOCKET_NAME,
            {
                "op": "record",
                "verb": args.verb,
                "call": args.call,
                "pbx": args.pbx,
                "actor": args.actor,
            },
        )
    except ControlError as exc:
        raise CommandError(str(exc)) from None
    if not reply.get("ok"):
        raise CommandError(reply.get("error", "refused"))
    print(
        f"{args.verb}: done ({', '.join(reply['done']) or 'nothing to do'}); "
        f"consent status {reply['status']}"
    )
    return 0
