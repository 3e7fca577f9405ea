"""``callconsent config check``: validate the config and say what it means."""

from __future__ import annotations

import argparse

from callconsent import config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect the configuration")
    cmds = p.add_subparsers(dest="config_command", metavar="ACTION")
    cmds.required = True
    check = cmds.add_parser(
        "check",
        help="validate the config file and print the effective settings",
        description="Validate the config (exit 2 and name the key on the first error) and "
        "print where data, keys, spool and database are, and each campaign's policy.",
    )
    check.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(f"config: {cfg.source} (valid)")
    print(f"data dir:  {cfg.data_dir}")
    print(f"database:  {_redact(cfg.database_url)}")
    print(f"keys:      {cfg.key_dir}")
    print(f"spool:     {cfg.spool_dir}")
    print(f"prompts:   {cfg.prompt_dir}")
    a, f = cfg.asterisk, cfg.freeswitch
    print(
        f"asterisk:  {'enabled' if a.enabled else 'disabled'} (FastAGI {a.agi_host}:{a.agi_port}, "
        f"AMI {a.ami_host}:{a.ami_port} {'as ' + a.ami_user if a.ami_user else 'not configured'})"
    )
    print(
        f"freeswitch: {'enabled' if f.enabled else 'disabled'} (outbound socket "
        f"{f.outbound_host}:{f.outbound_port}, ESL {f.esl_host}:{f.esl_port} "
        f"{'configured' if f.esl_password else 'not configured'})"
    )
    book = cfg.policies
    for policy in [book.default, *book.campaigns.values()]:
        p = policy
        print(
            f"policy {p.name}: mode={p.mode.value} legal_basis={p.legal_basis.value} "
            f"digits={p.accept_digit}/{p.decline_digit} attempts={p.max_attempts} "
            f"record_from={p.record_from.value} on_withdrawal={p.on_withdrawal.value} "
            f"retention_category={p.retention_category}"
        )
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
