"""A user's TOTP second factor, managed in the browser (``/account``): enrolment shows a new
secret and its ``otpauth://`` URI (and a QR code, drawn by segno), and takes effect only when
the user confirms it with their password and a current code; turning it off asks for the
password and a code too. An admin can reset it (``/admin/users``), for a user who lost the
device. Every change is an audit row naming the user; a wrong password or code counts toward
the user's lockout, as a failed login does.

A code is accepted once: the 30-second step it was made for is kept (``users.totp_last_step``),
and a code of that step or an earlier one is refused afterwards, at login as here (RFC 6238,
5.2: someone who saw a code typed cannot use it while it is still current).

The secret being enrolled is not kept on the server: the page carries it in its confirmation
form (the page is ``no-store``), and it is stored only once a code made from it is right."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import argon2
import pyotp
import segno
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.store import audit
from recorder.store.models import User
from web.accounts import AccountError
from web.services import Services

ISSUER = "callconsent"
_SECRET = re.compile(r"^[A-Z2-7]{32}$")  # pyotp.random_base32(): 160 bits


class TotpRefused(Exception):
    """The change was refused; the message says why (and the status fits it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def new_secret() -> str:
    return pyotp.random_base32()


def matched_step(secret: str, code: str) -> int | None:
    """The 30-second time step ``code`` was made for, if it is the code of the current step or
    of the one either side (a phone's clock a little off: as ``TOTP.verify(valid_window=1)``
    accepts), else None. The caller refuses a step not later than the last one accepted."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.now(UTC))
    for step in (current, current - 1, current + 1):
        if pyotp.utils.strings_equal(code.strip(), totp.generate_otp(step)):
            return step
    return None


def fresh_step(secret: str, code: str, last: int | None) -> tuple[int | None, str | None]:
    """(the code's step, None) when ``code`` is current and was not used before; else
    (None, why): ``wrong_code``, or ``reused_code`` for a step not later than ``last``."""
    step = matched_step(secret, code)
    if step is None:
        return None, "wrong_code"
    if last is not None and step <= last:
        return None, "reused_code"
    return step, None


def uri(secret: str, name: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (RFC 6238 defaults: SHA-1, 6 digits,
    30 s, as :func:`web.auth.log_in` checks)."""
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ISSUER)


def qr_svg(text: str) -> Markup:
    """The QR code of ``text`` as inline SVG (no script, no style: the page's CSP holds)."""
    return Markup(segno.make(text, error="m").svg_inline(scale=4, title="TOTP QR code"))  # noqa: S704 (segno's own markup)


def enrol(
    services: Services, name: str, secret: str, password: str, code: str, address: str
) -> None:
    secret = secret.strip().upper()
    if not _SECRET.match(secret):
        raise TotpRefused(400, "the secret is not one this server made: reload the page")
    with services.db.write() as s:
        if _user(s, name).totp_secret:
            raise TotpRefused(409, "a second factor is already on: turn it off first")
        user, step = _checked(services, s, name, password, code, secret, address, last=None)
        user.totp_secret, user.totp_last_step = secret, step
        _audit(services, s, name, name, "user.totp_enrolled", address)


def disable(services: Services, name: str, password: str, code: str, address: str) -> None:
    with services.db.write() as s:
        user = _user(s, name)
        if not user.totp_secret:
            raise TotpRefused(409, "no second factor is on")
        _checked(
            services, s, name, password, code, user.totp_secret, address, last=user.totp_last_step
        )
        user.totp_secret, user.totp_last_step = None, None
        _audit(services, s, name, name, "user.totp_disabled", address)


def reset(services: Services, name: str, *, actor: str, address: str) -> bool:
    """An admin turns a user's second factor off (a lost device); False if none was on."""
    try:
        return services.accounts.reset_totp(name, actor=actor, address=address)
    except AccountError as exc:
        raise TotpRefused(404, str(exc)) from None


def _user(s: Session, name: str) -> User:
    # FOR UPDATE (PostgreSQL; SQLite's write transaction holds the whole store): two requests
    # with the same code, or two failures at once, take turns on the user's row
    user = s.scalars(select(User).where(User.name == name).with_for_update()).one_or_none()
    if user is None:
        raise TotpRefused(404, f"no user {name!r}")
    return user


def _checked(
    services: Services,
    s: Session,
    name: str,
    password: str,
    code: str,
    secret: str,
    address: str,
    *,
    last: int | None,
) -> tuple[User, int]:
    """The user and the code's time step, if ``password`` is theirs and ``code`` is current for
    ``secret`` and of a step after ``last`` (the last one accepted for it). A wrong one counts
    as a failed login (and locks the account at the same limit); the refusal's audit row is
    written even though the change is not."""
    user = _user(s, name)
    if user.locked_until is not None and user.locked_until > datetime.now(UTC):
        raise TotpRefused(403, "this account is locked for a while after too many failed logins")
    if not user.password_hash:
        raise TotpRefused(409, "set a password first (callconsent users passwd)")
    hasher = services.hasher or argon2.PasswordHasher()
    step: int | None = None
    try:
        hasher.verify(user.password_hash, password)
        step, why = fresh_step(secret, code, last)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        why = "wrong_password"
    if why is None and step is not None:
        return user, step
    cfg = services.settings
    user.failed_logins += 1
    if user.failed_logins >= cfg.login_max_failures:
        user.locked_until = datetime.now(UTC) + timedelta(minutes=cfg.lockout_minutes)
    _audit(services, s, name, name, "user.totp_refused", address, reason=why)
    s.commit()  # the count and the row stay although the change is refused
    if why == "reused_code":  # the password was right: saying so tells nobody anything new
        raise TotpRefused(403, "that code was used already: wait for the next one")
    raise TotpRefused(403, "wrong password or code")


def _audit(
    services: Services,
    s: Session,
    actor: str,
    name: str,
    action: str,
    address: str,
    **details: object,
) -> None:
    audit.append(
        s,
        services.ctx,
        actor=actor,
        action=action,
        subject_type="user",
        subject_id=name,
        details={"address": address, **details},
    )
