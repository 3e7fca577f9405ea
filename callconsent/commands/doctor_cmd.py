"""``callconsent doctor``: warnings about this host (recorders that bypass consent, modes)."""

from __future__ import annotations

import argparse

from callconsent import config, doctor, doctor_host, doctor_layout  # noqa: F401 - registers checks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check this host for what would bypass consent or break callconsent",
        description="Prints one line per finding; exits 1 when there is a warning or an error.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    findings = doctor.run(cfg)
    for finding in findings:
        print(finding)
    return 1 if any(f.level != "ok" for f in findings) else 0
