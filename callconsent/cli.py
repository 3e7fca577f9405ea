"""The ``callconsent`` command. Each command group lives in ``callconsent/commands/``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from callconsent import __version__, config, logs
from callconsent.commands import COMMAND_MODULES
from callconsent.config import ConfigError
from callconsent.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError
from callconsent.privileges import PrivilegeError, act_as_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callconsent",
        description="Lawful call recording for Asterisk and FreeSWITCH: consent, encryption, "
        "evidence, retention.",
    )
    parser.add_argument("--version", action="version", version=f"callconsent {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $CALLCONSENT_CONFIG, else "
        "/etc/callconsent/callconsent.toml if present, else embedded defaults with ./var/)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def run() -> int:
    """The ``callconsent`` command (console script and ``python -m callconsent``): a process
    of its own, which a state-changing command started as root switches to the daemon's
    account."""
    return main(sys.argv[1:], switch_account=True)


def main(argv: Sequence[str] | None = None, *, switch_account: bool = False) -> int:
    """Run one command in this process. ``switch_account``: see :func:`run` (off for callers
    that embed the CLI, such as the tests, whose process must stay what it is)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.umask(0o027)  # nothing we write (database, exports, keys) is for other accounts
    logs.setup("info")
    try:
        if switch_account and getattr(args, "acts_as_daemon", False) and os.geteuid() == 0:
            switch_to_daemon(args)
        return int(args.func(args) or EXIT_OK)
    except ConfigError as exc:
        print(f"callconsent: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"callconsent: {exc}", file=sys.stderr)
        return exc.exit_code
    except PrivilegeError as exc:
        print(f"callconsent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear line first; the traceback for --debug readers
        logging.getLogger("callconsent").debug("unhandled", exc_info=True)
        print(f"callconsent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def switch_to_daemon(args: argparse.Namespace) -> None:
    """A command that creates or changes the daemon's state, started as root, acts as the
    daemon's account (as ``serve`` does), so everything it creates is that account's. What
    only root can read (a ``--key-file`` under /root, the terminal) is read first."""
    cfg = config.load(args.config)
    before = getattr(args, "before_switch", None)
    if before is not None:
        before(args)
    act_as_daemon(cfg.daemon.user, config.state_paths(cfg), own=[cfg.data_dir])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
