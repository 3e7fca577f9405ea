"""Who is asking: a browser session (a random token in an HttpOnly, SameSite=Strict cookie,
kept server-side as its hash, with idle and absolute expiry), a personal API token
(``Authorization: Bearer``), or, from the configured proxy only, an SSO user name header.

Logins are throttled per user (``login_max_failures`` then a lockout) and per client address
(``address_max_failures`` within ``lockout_minutes``), both kept in the store so that several
``callconsent web`` processes agree; every login and failed login is an audit row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import argon2
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import LoginFailure, User, WebSession
from recorder.store.prepared import Prepared
from web import totp
from web.accounts import PERSON_COLUMNS, Person, person_of_row
from web.services import Services
from web.tokens import new_token, token_hash

log = logging.getLogger("callconsent.web")

SESSION_COOKIE = "cc_session"
_NAME_SHAPE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Identity:
    person: Person
    via: str  # session | token | proxy
    csrf: str | None = None  # the session's CSRF token (sessions only)
    #: a write that is due (the session's idle expiry slides, a token's last use): run after
    #: the response is sent, so the commit is never in a request's time
    touch: Callable[[], None] | None = field(default=None, compare=False)


class LoginRefused(Exception):
    """Wrong name, password or code, or locked: the message is safe to show."""


def client_address(request: Request, services: Services) -> str:
    peer = request.client.host if request.client else ""
    if services.settings.is_trusted_proxy(peer):
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[-1].strip()
        return forwarded[:64] or peer
    return peer[:64]


def over_tls(request: Request, services: Services) -> bool:
    peer = request.client.host if request.client else ""
    if services.settings.is_trusted_proxy(peer):
        return request.headers.get("x-forwarded-proto", "") == "https"
    return request.url.scheme == "https"


def identify(request: Request, services: Services) -> Identity | None:
    """The user behind this request, or None (anonymous, expired, revoked, disabled)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        found = services.accounts.token_user(auth[7:].strip())
        if found is None:
            return None
        person, touch = found
        return Identity(person, "token", touch=touch)
    header = services.settings.proxy_auth_header
    peer = request.client.host if request.client else ""
    if header and services.settings.is_trusted_proxy(peer) and request.headers.get(header):
        person = services.accounts.get(request.headers[header])
        return Identity(person, "proxy") if person and not person.disabled else None
    raw = request.cookies.get(SESSION_COOKIE)
    return Sessions(services).load(raw) if raw else None


_SESSION_ROW = Prepared(
    select(
        WebSession.csrf_token,
        WebSession.revoked_at,
        WebSession.last_seen_at,
        WebSession.idle_expires_at,
        WebSession.absolute_expires_at,
        *PERSON_COLUMNS,
    )
    .join(User, User.id == WebSession.user_id)
    .where(WebSession.id_hash == bindparam("digest"))
)


def run_touch(identity: Identity | None) -> None:
    """Run an Identity's due write (after its response); a failure is one log line, never
    the request's: the next request tries again."""
    if identity is None or identity.touch is None:
        return
    try:
        identity.touch()
    except SQLAlchemyError as exc:
        log.warning(
            "web_touch_failed", extra={"kv": {"via": identity.via, "error": type(exc).__name__}}
        )


class Sessions:
    def __init__(self, services: Services) -> None:
        self.s = services

    def create(self, person: Person, address: str) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session."""
        raw, digest = new_token()
        csrf, _ = new_token()
        now = datetime.now(UTC)
        cfg = self.s.settings
        absolute = now + timedelta(hours=cfg.session_absolute_hours)
        with self.s.db.write() as s:
            s.add(
                WebSession(
                    id_hash=digest,
                    user_id=person.id,
                    csrf_token=csrf,
                    address=address,
                    created_at=now,
                    last_seen_at=now,
                    idle_expires_at=min(
                        now + timedelta(minutes=cfg.session_idle_minutes), absolute
                    ),
                    absolute_expires_at=absolute,
                )
            )
        return raw, csrf

    def load(self, raw: str) -> Identity | None:
        """One read: the session and its user, joined, on the DB-API cursor
        (:meth:`Database.reading`). It runs before every page: through ``Connection.execute``,
        with SQLite's ``BEGIN`` and ``ROLLBACK`` around it, it took 0.23 ms of the calls page's
        2 ms, and 0.14 ms this way (docs/web.md). When the idle expiry is due to move (at most
        every 15 s), the Identity carries that write as its ``touch``."""
        now = datetime.now(UTC)
        digest = token_hash(raw)
        with self.s.db.reading() as r:
            row = r.first(_SESSION_ROW, {"digest": digest})
        if row is None or row.revoked_at is not None or row.disabled:
            return None
        if now >= row.idle_expires_at or now >= row.absolute_expires_at:
            return None
        stale = (now - row.last_seen_at).total_seconds() > 15
        touch = (lambda: self._slide(digest)) if stale else None
        return Identity(person_of_row(row), "session", row.csrf_token, touch)

    def _slide(self, digest: str) -> None:
        now = datetime.now(UTC)
        with self.s.db.write() as s:
            row = s.get(WebSession, digest)
            if row is not None:
                row.last_seen_at = now
                row.idle_expires_at = min(
                    now + timedelta(minutes=self.s.settings.session_idle_minutes),
                    row.absolute_expires_at,
                )

    def revoke(self, raw: str) -> None:
        with self.s.db.write() as s:
            row = s.get(WebSession, token_hash(raw))
            if row is not None and row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)


class AddressThrottle:
    """Failed logins per client address within a window, kept in the store
    (``login_failures``), so every ``callconsent web`` process counts the same failures."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def blocked(self, address: str, limit: int, window_s: float) -> bool:
        since = datetime.now(UTC) - timedelta(seconds=window_s)
        with self.db.read() as s:
            failures = s.scalar(
                select(func.count())
                .select_from(LoginFailure)
                .where(LoginFailure.address == address[:64], LoginFailure.at > since)
            )
        return (failures or 0) >= limit

    def failed(self, address: str, window_s: float) -> None:
        """One more failure; those older than the window are dropped (they count no more)."""
        now = datetime.now(UTC)
        with self.db.write() as s:
            s.execute(
                delete(LoginFailure).where(LoginFailure.at <= now - timedelta(seconds=window_s))
            )
            s.add(LoginFailure(address=address[:64], at=now))


def log_in(
    services: Services,
    throttle: AddressThrottle,
    name: str,
    password: str,
    code: str,
    address: str,
) -> Person:
    """The person, if name, password (and a TOTP code not used before) are right and nothing
    is locked."""
    cfg = services.settings
    window = cfg.lockout_minutes * 60
    if throttle.blocked(address, cfg.address_max_failures, window):
        _audit_failure(services, name, address, "address_throttled")
        raise LoginRefused("too many failed logins from your address: try again later")
    hasher = services.hasher or argon2.PasswordHasher()
    now = datetime.now(UTC)
    with services.db.write() as s:
        # FOR UPDATE (PostgreSQL; SQLite's write transaction holds the whole store): two logins
        # with the same TOTP code, or two failures at once, take turns on the user's row
        found = select(User).where(User.name == name).with_for_update()
        user = s.scalars(found).one_or_none()
        why = _refusal(user, now)
        step = None
        if why is None:
            assert user is not None and user.password_hash is not None
            try:
                hasher.verify(user.password_hash, password)
                if user.totp_secret:
                    step, why = totp.fresh_step(user.totp_secret, code, user.totp_last_step)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                why = "wrong_password"
        if why is None:
            assert user is not None
            user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
            if step is not None:
                user.totp_last_step = step  # this code, and any before it, is spent
            if hasher.check_needs_rehash(user.password_hash or ""):
                user.password_hash = hasher.hash(password)
            audit.append(
                s,
                services.ctx,
                actor=user.name,
                action="web.login",
                subject_type="user",
                subject_id=user.name,
                details={"address": address},
            )
            return Person.of(user)
        if user is not None and why in ("wrong_password", "wrong_code", "reused_code"):
            user.failed_logins += 1
            if user.failed_logins >= cfg.login_max_failures:
                user.locked_until = now + timedelta(minutes=cfg.lockout_minutes)
                why += "_locked"
    throttle.failed(address, window)
    _audit_failure(services, name, address, why)
    log.info("web_login_failed", extra={"kv": {"reason": why}})
    if why.endswith("locked"):
        raise LoginRefused("this account is locked for a while after too many failed logins")
    raise LoginRefused("wrong name, password or code")


def _refusal(user: User | None, now: datetime) -> str | None:
    if user is None:
        return "unknown_user"
    if user.disabled:
        return "disabled"
    if user.password_hash is None:
        return "no_web_login"
    if user.locked_until is not None and user.locked_until > now:
        return "locked"
    return None


def _audit_failure(services: Services, name: str, address: str, why: str) -> None:
    shown = name if _NAME_SHAPE.match(name) and not name.lstrip("+").isdigit() else "(invalid)"
    with services.db.write() as s:
        audit.append(
            s,
            services.ctx,
            actor=shown,
            action="web.login_failed",
            subject_type="user",
            subject_id=shown,
            details={"address": address, "reason": why},
        )
