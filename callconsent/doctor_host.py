"""``callconsent doctor``'s checks of this host: the daemon's account, the database, the key
store and its epochs, the vault, the running daemon, and whether each enabled PBX answers.
Read-only: nothing is created or changed. Registered ahead of the PBX configuration checks
of :mod:`callconsent.doctor`."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
from datetime import UTC, datetime, timedelta

from callconsent.config import Config
from callconsent.control import SOCKET_NAME
from callconsent.doctor import CHECKS, Finding
from esl_listener.inbound import API_USED, SUBSCRIPTIONS
from esl_listener.marks import REALM as MARK_REALM
from recorder.store import migrate
from recorder.store.audit import AuditContext
from recorder.store.db import Database
from recorder.vault.expiry import RetentionRule
from recorder.vault.keydir import KeyDir, KeyPermissionError
from recorder.vault.keystore import KeyStore

TIMEOUT_S = 3.0


def account(cfg: Config) -> list[Finding]:
    try:
        pwd.getpwnam(cfg.daemon.user)
    except KeyError:
        return [
            Finding(
                "warn",
                "account",
                f"no account {cfg.daemon.user!r} (daemon.user)",
                f"useradd --system --user-group --shell /usr/sbin/nologin {cfg.daemon.user}",
            )
        ]
    return [Finding("ok", "account", f"the daemon runs as {cfg.daemon.user!r}")]


def store(cfg: Config) -> list[Finding]:
    """The database answers, its schema is current; the key store and its epochs."""
    if not cfg.database.url and not (cfg.data_dir / "callconsent.db").exists():
        return [
            Finding(
                "error",
                "database",
                f"no database at {cfg.data_dir / 'callconsent.db'}",
                "start the daemon once, or run: callconsent db upgrade",
            )
        ]
    try:
        db = Database(cfg.database_url)
    except Exception as exc:  # a bad URL or a missing driver
        return [Finding("error", "database", f"cannot use {cfg.database_url!r}: {exc}")]
    try:
        try:
            current, head = migrate.current_revision(db), migrate.head_revision()
        except Exception as exc:
            return [
                Finding(
                    "error",
                    "database",
                    f"does not answer: {exc}".splitlines()[0],
                    "check [database] url and that the server runs",
                )
            ]
        found = [
            Finding("ok", "database", f"schema {current} is current")
            if current == head
            else Finding(
                "error",
                "database",
                f"schema is {current or 'empty'}, needs {head}",
                "run: callconsent db upgrade",
            )
        ]
        return found + _keys(cfg, db)
    finally:
        db.dispose()


def _keys(cfg: Config, db: Database) -> list[Finding]:
    keydir = KeyDir(cfg.key_dir)
    try:
        keydir.check_dir()
        for path in keydir.path.iterdir():
            if path.is_file():
                keydir.check_file(path)
    except FileNotFoundError:
        return [
            Finding(
                "error",
                "keys",
                f"no key directory {cfg.key_dir}",
                "start the daemon once, then: callconsent keys init",
            )
        ]
    except KeyPermissionError as exc:
        return [Finding("error", "keys", str(exc))]
    keys = KeyStore(keydir, db, AuditContext(node=cfg.daemon.node))
    if not keys.epochs():
        return [
            Finding(
                "error",
                "keys",
                "no key epochs: recordings stay unencrypted and pending",
                "run: callconsent keys init",
            )
        ]
    r = cfg.retention
    rule = RetentionRule(r.default_days, r.max_days, dict(r.categories))
    runway = keys.runway(datetime.now(UTC), rule.longest_days)
    weeks = runway / timedelta(weeks=1)
    if runway <= timedelta(0):
        return [
            Finding(
                "error",
                "keys",
                "no key epoch for a recording made now: it stays pending",
                "run: callconsent keys rotate",
            )
        ]
    if weeks < cfg.recorder.runway_warning_weeks:
        return [
            Finding(
                "warn",
                "keys",
                f"key epochs reach only {weeks:.1f} weeks past the longest "
                f"retention ({rule.longest_days} days)",
                "run: callconsent keys rotate",
            )
        ]
    return [Finding("ok", "keys", f"key directory private; epochs reach {weeks:.0f} weeks ahead")]


def vault(cfg: Config) -> list[Finding]:
    path = cfg.vault_dir
    if not path.exists():
        return [Finding("warn", "vault", f"{path} does not exist yet (the daemon creates it)")]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o007:
        return [
            Finding(
                "error",
                "vault",
                f"{path} has mode {mode:04o}: others can reach encrypted recordings",
                f"chmod 750 {path}",
            )
        ]
    return [Finding("ok", "vault", f"{path} is private")]


def daemon(cfg: Config) -> list[Finding]:
    sock = cfg.data_dir / SOCKET_NAME
    if sock.is_socket():
        return [Finding("ok", "daemon", f"running (control socket {sock})")]
    return [Finding("warn", "daemon", "not running on this host", "systemctl start callconsent")]


def pbx(cfg: Config) -> list[Finding]:
    found: list[Finding] = []
    a, f = cfg.asterisk, cfg.freeswitch
    if a.enabled:
        found.append(_ami(a.ami_host, a.ami_port, a.ami_user, a.ami_secret))
    if f.enabled:
        found.append(_esl(f.esl_host, f.esl_port, f.esl_user, f.esl_password))
    if not found:
        found.append(Finding("warn", "pbx", "neither [asterisk] nor [freeswitch] is enabled"))
    return found


def _ami(host: str, port: int, user: str, secret: str) -> Finding:
    """Connect, read the banner, log in with our write=call user, log off."""
    try:
        with socket.create_connection((host, port), TIMEOUT_S) as s:
            s.settimeout(TIMEOUT_S)
            banner = s.makefile("rb").readline().decode(errors="replace").strip()
            if not banner.startswith("Asterisk Call Manager"):
                return Finding("error", "ami", f"{host}:{port} is not AMI ({banner[:40]!r})")
            if not user:
                return Finding(
                    "warn",
                    "ami",
                    f"AMI answers ({banner}) but [asterisk] "
                    "ami_user is not set: no recording control",
                    "configure the write=call user of manager_callconsent.conf",
                )
            s.sendall(
                f"Action: Login\r\nUsername: {user}\r\nSecret: {secret}\r\n"
                "Events: off\r\n\r\n".encode()
            )
            reply = _block(s)
            s.sendall(b"Action: Logoff\r\n\r\n")
    except OSError as exc:
        return Finding(
            "error",
            "ami",
            f"AMI {host}:{port} unreachable: {exc}",
            "is Asterisk running, with manager enabled on that address?",
        )
    if "Response: Success" in reply:
        return Finding("ok", "ami", f"AMI {host}:{port} accepts user {user!r}")
    return Finding(
        "error",
        "ami",
        f"AMI refused user {user!r}",
        "check ami_user/ami_secret against manager_callconsent.conf",
    )


def _esl(host: str, port: int, user: str, password: str) -> Finding:
    """Connect, answer auth/request with our credential, exit."""
    try:
        with socket.create_connection((host, port), TIMEOUT_S) as s:
            s.settimeout(TIMEOUT_S)
            if "auth/request" not in _block(s, b"\n\n"):
                return Finding("error", "esl", f"{host}:{port} is not an event socket")
            if not password:
                return Finding(
                    "warn",
                    "esl",
                    "ESL answers but [freeswitch] esl_password is not set",
                    "configure the ESL user of dialplan/freeswitch",
                )
            login = f"userauth {user}:{password}" if user else f"auth {password}"
            s.sendall(login.encode() + b"\n\n")
            reply = _block(s, b"\n\n")
            db = None
            if "+OK accepted" in reply and _may_use(reply, "db"):
                db = _probe_mod_db(s)
            with contextlib.suppress(OSError):  # the login is what this check is about
                s.sendall(b"exit\n\n")
    except OSError as exc:
        return Finding(
            "error",
            "esl",
            f"ESL {host}:{port} unreachable: {exc}",
            "is FreeSWITCH running, with mod_event_socket on that address?",
        )
    if "+OK accepted" in reply:
        rights = _esl_rights(host, port, reply)
        if db is not None and "Command not found" in db:
            also = f"; {rights.message}" if rights.level != "ok" else ""
            return Finding(
                "warn",
                "esl",
                f"ESL {host}:{port}: FreeSWITCH has no mod_db, so the caller's withdraw key "
                f"leaves no mark while callconsent is down (the recording is then kept){also}",
                'load mod_db (modules.conf.xml: <load module="mod_db"/>)'
                + (f"; {rights.hint}" if also and rights.hint else ""),
            )
        return rights
    return Finding(
        "error",
        "esl",
        "ESL refused our credential",
        "check esl_user/esl_password against the ESL user snippet",
    )


def _headers(reply: str) -> dict[str, str]:
    return dict(line.partition(": ")[::2] for line in reply.splitlines() if ": " in line)


def _may_use(reply: str, api: str) -> bool:
    """A password login may use any api; a user login names its own (``Allowed-API``)."""
    allowed = _headers(reply).get("Allowed-API")
    return allowed is None or api in allowed.split(",")


def _probe_mod_db(s: socket.socket) -> str | None:
    """mod_db keeps the withdraw key's mark (esl_listener.marks): a key that is not there
    answers ``-ERR no reply``; without mod_db, ``-ERR db Command not found!`` (1.10.12). None
    when FreeSWITCH did not answer (the login itself is what this check is about)."""
    try:
        s.sendall(f"api db select/{MARK_REALM}/callconsent-doctor-probe\n\n".encode())
        return _api_body(s)
    except OSError:
        return None


def _api_body(s: socket.socket) -> str:
    """The body of the ``api/response`` to the command just sent."""
    head, found, body = _recv_until(s, b"\n\n").partition(b"\n\n")
    if not found:
        return ""
    length = int(_headers(head.decode(errors="replace")).get("Content-Length", "0") or 0)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return body[:length].decode(errors="replace")


def _esl_rights(host: str, port: int, reply: str) -> Finding:
    """A userauth reply names what the user may do (``Allowed-API``, ``Allowed-Events``,
    capture s5b); a password login may do anything and names nothing."""
    headers = _headers(reply)
    allowed_api = headers.get("Allowed-API")
    allowed_events = headers.get("Allowed-Events")
    missing = []
    if allowed_api is not None:
        missing += [a for a in API_USED if a not in allowed_api.split(",")]
    if allowed_events is not None:
        have = allowed_events.split(",")
        needed = {n for names in SUBSCRIPTIONS for n in names.split(" ")}
        missing += sorted(n for n in needed if n not in have)  # subclasses are listed too
    if missing:
        return Finding(
            "warn",
            "esl",
            f"ESL {host}:{port} accepts our credential, but the user may not use: "
            + ", ".join(missing),
            "add them to esl-allowed-api / esl-allowed-events (dialplan/freeswitch/"
            "callconsent-esl-user.xml)",
        )
    return Finding("ok", "esl", f"ESL {host}:{port} accepts our credential")


def _recv_until(s: socket.socket, end: bytes) -> bytes:
    """What arrives up to and including ``end`` (and whatever came with it), at most 64 KiB."""
    data = b""
    while end not in data and len(data) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _block(s: socket.socket, end: bytes = b"\r\n\r\n") -> str:
    return _recv_until(s, end).decode(errors="replace")


CHECKS[0:0] = [account, store, vault, daemon, pbx]
