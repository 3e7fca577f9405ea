"""``callconsent serve``: the daemon, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from callconsent import __version__, config, heap, logs
from callconsent.app import App
from callconsent.daemon import run
from callconsent.privileges import act_as_daemon

log = logging.getLogger("callconsent")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description="Run the daemon: the PBX adapters that are enabled, the finalizer and the "
        "retention pass. Stops cleanly on SIGTERM or Ctrl-C; SIGHUP re-reads the config.",
    )
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    arenas = heap.limit_arenas()  # before any thread: each would get an arena of its own
    cfg = config.load(args.config)
    logs.setup(cfg.daemon.log_level, cfg.daemon.log_format)
    log.info(
        "starting",
        extra={
            "kv": {
                "version": __version__,
                "config": cfg.source,
                "pid": os.getpid(),
                "malloc_arenas": arenas,
            }
        },
    )
    if os.geteuid() == 0:
        who = act_as_daemon(cfg.daemon.user, config.state_paths(cfg), own=[cfg.data_dir])
        log.info("dropped_root", extra={"kv": {"user": who}})
    app = App.open(cfg)
    log.info(
        "store",
        extra={
            "kv": {
                "database": _safe_url(cfg.database_url),
                "data_dir": cfg.data_dir,
                "spool": cfg.spool_dir,
                "keys": cfg.key_dir,
            }
        },
    )
    try:
        asyncio.run(run(app))
    finally:
        app.close()
        log.info("stopped")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
