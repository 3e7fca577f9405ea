"""``callconsent prompts build``: the consent prompts, spoken or from your own recordings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from callconsent import config, prompts_build
from callconsent.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prompts",
        help="build the consent prompts (espeak-ng) or convert your own recordings",
        description="Prompts are 8 kHz mono 16-bit WAV files in <prompts dir>/<language>/"
        "<prompt id>.wav, readable by the PBX (dirs 0755, files 0644). Texts: "
        "callconsent/prompt_texts/<language>.toml. Restart the daemon (or send it SIGHUP) "
        "after changing prompts.",
    )
    psub = p.add_subparsers(dest="prompts_command", metavar="ACTION")
    psub.required = True
    b = psub.add_parser("build", help="speak the prompts, or convert one recording (--from)")
    b.add_argument(
        "--language",
        action="append",
        metavar="L",
        help=f"one of {', '.join(prompts_build.LANGUAGES)} (repeatable; default: all)",
    )
    b.add_argument("--out", metavar="DIR", help="prompt directory (default: [prompts] dir)")
    b.add_argument("--force", action="store_true", help="overwrite existing prompt files")
    b.add_argument("--from", dest="source", metavar="FILE", help="your recording, any format")
    b.add_argument("--prompt", metavar="ID", help="with --from: consent, notice, thanks, …")
    b.set_defaults(func=build, acts_as_daemon=True)


def build(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    out = Path(args.out) if args.out else cfg.prompt_dir
    try:
        if args.source:
            if not args.prompt or not args.language or len(args.language) != 1:
                raise CommandError("--from needs --prompt ID and one --language L")
            language = args.language[0]
            if not re.fullmatch(r"[a-z]{2,3}(_[A-Za-z0-9]{2,8})?", language):
                raise CommandError(f"not a language code: {language!r}")
            path = prompts_build.convert(Path(args.source), out, args.prompt, language)
            print(f"wrote {path}")
            return 0
        default = cfg.policies.default
        written, kept = prompts_build.build(
            out,
            tuple(args.language or prompts_build.LANGUAGES),
            accept=default.accept_digit,
            decline=default.decline_digit,
            force=args.force,
        )
    except prompts_build.PromptBuildError as exc:
        raise CommandError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    if kept:
        print(f"kept {len(kept)} existing file(s) (--force overwrites them)")
    return 0
