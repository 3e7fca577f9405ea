"""``callconsent web``: the web console and HTTP API (``web/``), a process of its own, apart
from ``serve``: it is the one place that holds the private keys (unlocked at start from
``[web] key_file`` / ``passphrase_file`` / the systemd credential, in memory only). Without
them it serves everything but audio, and the pages say why.

Started as root, it reads that secret first and then acts as the daemon's account (as
``serve`` does), so the database and the files it touches stay that account's."""

from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from callconsent import config, heap
from callconsent.app import App
from callconsent.config import Config
from callconsent.recordings import custody, key_store, retention_rule, subjects
from recorder.vault.keydir import KeyDir, KeyPermissionError
from recorder.vault.keystore import KeyStoreError, PrivateKeys
from web.services import Services, WebSettings

log = logging.getLogger("callconsent.web")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web",
        help="serve the web console and the HTTP API (default 127.0.0.1:8470)",
        description="Run the web console: log in with a user from `callconsent users add`. "
        "Put it behind a TLS reverse proxy (deploy/README.md) for anything but localhost.",
    )
    p.add_argument("--host", help="override [web] host")
    p.add_argument("--port", type=int, help="override [web] port")
    p.set_defaults(func=run, acts_as_daemon=True, before_switch=read_secret_first)


def read_secret_first(args: argparse.Namespace) -> None:
    """Started as root: read the key store's secret (a root-only key or passphrase file, the
    systemd credential) before the command switches to the daemon's account."""
    args.key_secret = key_secret(config.load(args.config))


def settings_of(cfg: Config) -> WebSettings:
    w = cfg.web
    return WebSettings(
        session_idle_minutes=w.session_idle_minutes,
        session_absolute_hours=w.session_absolute_hours,
        share_link_max_hours=w.share_link_max_hours,
        login_max_failures=w.login_max_failures,
        lockout_minutes=w.lockout_minutes,
        address_max_failures=w.address_max_failures,
        trusted_proxy=w.trusted_proxy,
        proxy_auth_header=w.proxy_auth_header,
        secure_cookies=w.secure_cookies,
    )


def key_secret(cfg: Config) -> tuple[bytes | None, str]:
    """The key store's secret from the first source configured, or (None, why not)."""
    w = cfg.web
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates: list[tuple[Path, bool]] = []
    if creds and (Path(creds) / w.credential).exists():
        candidates.append((Path(creds) / w.credential, w.credential_is_key_file))
    if w.key_file:
        candidates.append((cfg._abs(w.key_file), True))
    if w.passphrase_file:
        candidates.append((cfg._abs(w.passphrase_file), False))
    if not candidates:
        return None, (
            "no key file, passphrase file or systemd credential is configured in [web] "
            "(key_file, passphrase_file, credential)"
        )
    path, is_key_file = candidates[0]
    try:
        if not (creds and path.parent == Path(creds)):  # systemd made the credential private
            KeyDir(path.parent).check_file(path)
        data = path.read_bytes()
    except (OSError, KeyPermissionError) as exc:
        return None, f"cannot read {path}: {exc}"
    return (data if is_key_file else data.rstrip(b"\r\n")), ""


def services_of(app: App, secret_read: tuple[bytes | None, str] | None = None) -> Services:
    """``secret_read``: what :func:`key_secret` gave before a switch from root (else read now)."""
    cfg = app.config
    store = key_store(app)
    keys: PrivateKeys | None = None
    secret, problem = secret_read if secret_read is not None else key_secret(cfg)
    if secret is not None:
        try:
            keys = store.unlock(secret)
        except (KeyStoreError, KeyPermissionError) as exc:
            problem = f"the key store could not be unlocked: {exc}"
    rule = retention_rule(cfg)

    def runway_weeks() -> int:
        return store.runway(datetime.now(UTC), rule.longest_days).days // 7

    return Services(
        db=app.db,
        ctx=app.audit_ctx,
        numbers=app.numbers,
        custody=custody(app),
        subjects=subjects(app),
        key_store=store,
        settings=settings_of(cfg),
        keys=keys,
        keys_problem=problem or "",
        facts={"runway_weeks": runway_weeks},
        started_at=datetime.now(UTC),
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import build

    # before any thread: each of the request threads would get an arena of its own (three
    # full bench/web.py runs each way: the server's RSS 86 -> 111-115 MiB with glibc's
    # default, 86 -> 100-104 MiB with two, the pages as fast; docs/web.md)
    arenas = heap.limit_arenas()
    cfg = config.load(args.config)
    app = App.open(cfg)
    try:
        services = services_of(app, getattr(args, "key_secret", None))
        host, port = args.host or cfg.web.host, args.port or cfg.web.port
        log.info(
            "web_starting",
            extra={
                "kv": {
                    "host": host,
                    "port": port,
                    "audio": services.keys is not None,
                    "malloc_arenas": arenas,
                }
            },
        )
        if services.keys is None:
            log.warning("web_without_keys", extra={"kv": {"reason": services.keys_problem}})
        # uvicorn's access log would write paths (share tokens) and query strings: ours logs
        # the route template only (web.routing)
        uvicorn.run(
            build(services),
            host=host,
            port=port,
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
        )
    finally:
        app.close()
    return 0
