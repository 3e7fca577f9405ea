"""Users: who may act on recordings, with which role. Used by ``callconsent users``, by the
CLI's ``--actor`` check and by the web console's login.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended
set); API tokens are random and stored as their SHA-256 (:mod:`web.tokens`). Every change is
an audit row naming who made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2
import pyotp
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import ApiToken, User, WebSession
from recorder.store.prepared import Prepared
from web.tokens import new_token, token_hash

ROLES = ("agent", "supervisor", "dpo", "admin")
MIN_PASSWORD = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class AccountError(Exception):
    """A user cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Person:
    """A user as the rest of the code sees them (no secrets)."""

    id: int
    name: str
    role: str
    disabled: bool
    has_password: bool
    has_totp: bool
    locked_until: datetime | None
    last_login_at: datetime | None

    @classmethod
    def of(cls, u: User) -> Person:
        return cls(
            u.id,
            u.name,
            u.role,
            u.disabled,
            bool(u.password_hash),
            bool(u.totp_secret),
            u.locked_until,
            u.last_login_at,
        )


#: the columns a :class:`Person` is made of, for statements that read a user beside another row
PERSON_COLUMNS = (
    User.id,
    User.name,
    User.role,
    User.disabled,
    User.password_hash.is_not(None).label("has_password"),
    User.totp_secret.is_not(None).label("has_totp"),
    User.locked_until,
    User.last_login_at,
)


def person_of_row(row: Any) -> Person:
    """A Person from a row with :data:`PERSON_COLUMNS` (a ``Row``, or a ``Reading``'s row)."""
    return Person(
        row.id,
        row.name,
        row.role,
        bool(row.disabled),
        bool(row.has_password),
        bool(row.has_totp),
        row.locked_until,
        row.last_login_at,
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError(
            f"user name {name!r}: letters, digits and _ . @ - only, 1 to 64, no leading symbol"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


_TOKEN_ROW = Prepared(
    select(
        ApiToken.id.label("token_id"),
        ApiToken.revoked_at,
        ApiToken.expires_at,
        ApiToken.last_used_at,
        *PERSON_COLUMNS,
    )
    .join(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hash == bindparam("digest"))
)


class Accounts:
    def __init__(
        self, db: Database, ctx: audit.AuditContext, hasher: argon2.PasswordHasher | None = None
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.hasher = hasher or argon2.PasswordHasher()  # argon2id

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> Person | None:
        with self.db.read() as s:
            u = s.scalars(select(User).where(User.name == name)).one_or_none()
            return Person.of(u) if u else None

    def by_id(self, user_id: int) -> Person | None:
        with self.db.read() as s:
            u = s.get(User, user_id)
            return Person.of(u) if u else None

    def all(self) -> list[Person]:
        with self.db.read() as s:
            return [Person.of(u) for u in s.scalars(select(User).order_by(User.name))]

    # -- changing -----------------------------------------------------------------------------

    def add(
        self, name: str, role: str, password: str | None, *, actor: str, totp: bool = False
    ) -> str | None:
        """Create a user; returns the TOTP secret to enrol when ``totp``."""
        check_name(name)
        check_role(role)
        now = datetime.now(UTC)
        secret = pyotp.random_base32() if totp else None
        with self.db.write() as s:
            if s.scalars(select(User.id).where(User.name == name)).first() is not None:
                raise AccountError(f"user {name!r} exists already")
            s.add(
                User(
                    name=name,
                    role=role,
                    password_hash=self.hasher.hash(check_password(password)) if password else None,
                    totp_secret=secret,
                    disabled=False,
                    failed_logins=0,
                    created_at=now,
                    password_changed_at=now if password else None,
                )
            )
            self._audit(s, actor, "user.added", name, role=role, totp=totp)
        return secret

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> None:
        """Disabling also ends the user's sessions and revokes their API tokens."""
        with self.db.write() as s:
            u = self._user(s, name)
            u.disabled = disabled
            if disabled:
                _end_access(s, u.id)
            else:
                u.failed_logins, u.locked_until = 0, None
            self._audit(s, actor, "user.disabled" if disabled else "user.enabled", name)

    def set_password(self, name: str, password: str, *, actor: str) -> None:
        """A new password ends every session of the user (and lifts a lockout)."""
        digest = self.hasher.hash(check_password(password))
        with self.db.write() as s:
            u = self._user(s, name)
            u.password_hash, u.password_changed_at = digest, datetime.now(UTC)
            u.failed_logins, u.locked_until = 0, None
            _end_access(s, u.id, tokens=False)
            self._audit(s, actor, "user.password_changed", name)

    def set_role(self, name: str, role: str, *, actor: str) -> None:
        check_role(role)
        with self.db.write() as s:
            u = self._user(s, name)
            before, u.role = u.role, role
            self._audit(s, actor, "user.role_changed", name, before=before, after=role)

    def reset_totp(self, name: str, *, actor: str, **details: object) -> bool:
        """Turn a user's TOTP second factor off (a lost device: the admin's Users page,
        ``callconsent users totp-reset``); False when none was on."""
        with self.db.write() as s:
            u = self._user(s, name)
            if not u.totp_secret:
                return False
            u.totp_secret, u.totp_last_step = None, None
            self._audit(s, actor, "user.totp_reset", name, **details)
            return True

    def create_token(self, name: str, label: str, days: int, *, actor: str) -> tuple[int, str]:
        """A personal API token; returns (its id, the token), shown once."""
        if not 1 <= days <= 366:
            raise AccountError("a token lives 1 to 366 days")
        raw, digest = new_token()
        now = datetime.now(UTC)
        with self.db.write() as s:
            u = self._user(s, name)
            if u.disabled:
                raise AccountError(f"user {name!r} is disabled")
            tok = ApiToken(
                token_hash=digest,
                user_id=u.id,
                label=label[:64],
                created_at=now,
                expires_at=now + timedelta(days=days),
            )
            s.add(tok)
            s.flush()
            self._audit(s, actor, "token.created", name, token_id=tok.id, days=days)
            return tok.id, raw

    def revoke_token(self, token_id: int, *, actor: str) -> bool:
        with self.db.write() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None:
                raise AccountError(f"no API token {token_id}")
            if tok.revoked_at is not None:
                return False
            tok.revoked_at = datetime.now(UTC)
            owner = s.get(User, tok.user_id)
            self._audit(s, actor, "token.revoked", owner.name if owner else None, token_id=tok.id)
            return True

    def tokens(self, name: str | None = None) -> list[ApiToken]:
        with self.db.read() as s:
            q = select(ApiToken).order_by(ApiToken.id)
            if name is not None:
                q = q.join(User, User.id == ApiToken.user_id).where(User.name == name)
            return list(s.scalars(q))

    def token_owner(self, raw: str) -> Person | None:
        """The enabled user a live API token acts as, or None (its last use written now)."""
        found = self.token_user(raw)
        if found is None:
            return None
        person, touch = found
        if touch is not None:
            touch()
        return person

    def token_user(self, raw: str) -> tuple[Person, Callable[[], None] | None] | None:
        """The enabled user a live API token acts as, and the write of its last use when that
        is a minute old (not on every request: a commit per API call), for the caller to run
        when it suits (the web console: after the response). One read, on the DB-API cursor, as
        for a session (:meth:`web.auth.Sessions.load`)."""
        now = datetime.now(UTC)
        with self.db.reading() as r:
            row = r.first(_TOKEN_ROW, {"digest": token_hash(raw)})
        if row is None or row.revoked_at is not None or row.expires_at <= now or row.disabled:
            return None
        stale = row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60
        token_id = row.token_id

        def touch() -> None:
            with self.db.write() as s:
                found = s.get(ApiToken, token_id)
                if found is not None:
                    found.last_used_at = datetime.now(UTC)

        return person_of_row(row), (touch if stale else None)

    # -- helpers ------------------------------------------------------------------------------

    def _user(self, s: Session, name: str) -> User:
        u = s.scalars(select(User).where(User.name == name)).one_or_none()
        if u is None:
            raise AccountError(f"no user {name!r}: add it with `callconsent users add`")
        return u

    def _audit(
        self, s: Session, actor: str, action: str, name: str | None, **details: object
    ) -> None:
        audit.append(
            s,
            self.ctx,
            actor=actor,
            action=action,
            subject_type="user",
            subject_id=name,
            details=details,
        )


def _end_access(s: Session, user_id: int, *, tokens: bool = True) -> None:
    now = datetime.now(UTC)
    s.execute(
        update(WebSession)
        .where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if tokens:
        s.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
