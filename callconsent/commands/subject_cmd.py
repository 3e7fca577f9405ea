"""``callconsent subject export | erase --number N``: data-subject requests (dpo/admin)."""

from __future__ import annotations

import argparse
from pathlib import Path

from callconsent.authz import authorized_app
from callconsent.commands.keys_cmd import add_secret_args, unlock
from callconsent.errors import CommandError
from callconsent.recordings import subjects
from recorder.governance.custody import CustodyError
from recorder.governance.subjects import SubjectError, unreadable
from recorder.store.numbers import NotAPhoneNumber


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subject", help="access and erasure requests by phone number (dpo/admin)")
    cmds = p.add_subparsers(dest="subject_command", metavar="ACTION")
    cmds.required = True
    ex = cmds.add_parser(
        "export",
        help="every call, consent decision and recording of a number, decrypted, with a manifest",
        description="Write recordings/<id>.wav and manifest.json (Art. 15/20) into a new "
        "directory; each file's SHA-256 is in the manifest. Audited without the number.",
    )
    ex.add_argument("--out", required=True, type=Path, metavar="DIR")
    add_secret_args(ex)
    er = cmds.add_parser(
        "erase",
        help="delete a number's recordings (held ones are kept and listed) and the number itself",
    )
    for p in (ex, er):
        p.add_argument("--number", required=True, help="any common notation, e.g. 0151 1234567")
        p.add_argument("--actor", required=True, help="a dpo or admin from [actors]")
        p.add_argument("--reason", required=True, help="e.g. the request's reference")
    ex.set_defaults(func=export)
    er.set_defaults(func=erase, acts_as_daemon=True)


def export(args: argparse.Namespace) -> int:
    with authorized_app(args, "subject.export", "subject", None) as app:
        try:
            manifest = subjects(app).export(
                args.number, args.out, unlock(app, args), actor=args.actor, reason=args.reason
            )
        except (NotAPhoneNumber, SubjectError) as exc:
            raise CommandError(str(exc)) from None
    recs = sum(len(c["recordings"]) for c in manifest["calls"])
    print(
        f"{args.out}: {len(manifest['calls'])} call(s), {recs} recording(s), "
        f"{len(manifest['files'])} audio file(s), manifest.json"
    )
    if missing := unreadable(manifest):
        print(f"{len(missing)} recording(s) could not be decrypted; manifest.json says why:")
        for rid in missing:
            print(f"  {rid}")
        return 1
    return 0


def erase(args: argparse.Namespace) -> int:
    with authorized_app(args, "subject.erase", "subject", None) as app:
        try:
            result = subjects(app).erase(args.number, actor=args.actor, reason=args.reason)
        except (NotAPhoneNumber, CustodyError) as exc:
            raise CommandError(str(exc)) from None
    for rid in result.held_kept:
        print(f"kept (legal hold): {rid}")
    if not result.complete:
        print(f"{len(result.deleted)} recording(s) deleted here; not finished:")
        for rid, host in sorted(result.elsewhere.items()):
            print(f"  on host {host}: {rid}")
        print("run the same erase on those hosts; the number is removed by the last of them")
        return 1
    print(
        f"erased: {result.calls} call(s) no longer carry the number; "
        f"{len(result.deleted)} recording(s) deleted"
    )
    return 0
