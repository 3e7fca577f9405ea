"""``callconsent dialplan render asterisk --out DIR``: the files an Asterisk admin loads,
filled in from this host's config (FastAGI host and port, spool, AMI user)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from callconsent import config
from callconsent.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dialplan",
        help="render the dialplan files to load into the PBX",
        description="Write the PBX files with this host's settings. Asterisk: "
        "extensions_callconsent.conf, features_callconsent.conf, manager_callconsent.conf; "
        "dialplan/asterisk/README.md says where each goes.",
    )
    dsub = p.add_subparsers(dest="dialplan_command", metavar="ACTION")
    dsub.required = True
    r = dsub.add_parser("render", help="write the files for one PBX into a directory")
    r.add_argument("pbx", choices=("asterisk",))
    r.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    r.set_defaults(func=render)


def asterisk_settings(cfg: config.Config):  # type: ignore[no-untyped-def]
    from agi.dialplan import DialplanSettings

    a = cfg.asterisk
    return DialplanSettings(
        agi_host=a.agi_host,
        agi_port=a.agi_port,
        spool=str(cfg.spool_dir),
        ami_user=a.ami_user or "callconsent",
        ami_secret=a.ami_secret,
        ami_system_user=a.ami_system_user or "callconsent-system",
        spy_group=a.spy_group,
        feature_start=a.feature_start,
        feature_pause=a.feature_pause,
        feature_stop=a.feature_stop,
        feature_discard=a.feature_discard,
    )


def render(args: argparse.Namespace) -> int:
    from agi.dialplan import SECRET_PLACEHOLDER, RenderError
    from agi.dialplan import render as render_files

    cfg = config.load(args.config)
    try:
        files = render_files(asterisk_settings(cfg))
    except RenderError as exc:
        raise CommandError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        # the manager file holds the AMI secret: not for other accounts
        os.chmod(path, 0o640 if name.startswith("manager") else 0o644)
        print(f"wrote {path}")
    if not cfg.asterisk.ami_secret:
        print(
            f"note: [asterisk] ami_secret is empty, so manager_callconsent.conf says "
            f"'secret = {SECRET_PLACEHOLDER}': set the same secret in both places"
        )
    return 0
