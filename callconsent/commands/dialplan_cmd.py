"""``callconsent dialplan render asterisk|freeswitch --out DIR``: the files a PBX admin loads,
with this host's values. Each PBX has its own renderer module; this maps names to them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from callconsent import config
from callconsent.config import Config
from callconsent.errors import CommandError

Renderer = Callable[[Config, Path], list[Path]]


def _freeswitch(cfg: Config, out: Path) -> list[Path]:
    from callconsent.dialplan_render_freeswitch import RenderError, render

    try:
        return render(cfg, out)
    except RenderError as exc:
        raise CommandError(str(exc)) from None


def _asterisk(cfg: Config, out: Path) -> list[Path]:
    from callconsent.dialplan_render_asterisk import render

    try:
        return render(cfg, out)
    except ValueError as exc:  # agi.dialplan.RenderError
        raise CommandError(str(exc)) from None


#: PBX name -> renderer.
RENDERERS: dict[str, Renderer] = {"freeswitch": _freeswitch, "asterisk": _asterisk}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dialplan",
        help="write the dialplan files a PBX admin loads",
        description="Write the shipped dialplan files with this host's values (addresses, "
        "listen-in group, credentials) into a directory; see dialplan/<pbx>/README.md.",
    )
    verbs = p.add_subparsers(dest="dialplan_verb", metavar="VERB")
    verbs.required = True
    r = verbs.add_parser("render", help="write the files for one PBX into --out")
    r.add_argument("pbx", choices=sorted(RENDERERS))
    r.add_argument("--out", required=True, type=Path, metavar="DIR")
    r.set_defaults(func=render)


def render(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    for path in RENDERERS[args.pbx](cfg, args.out):
        print(path)
    return 0
