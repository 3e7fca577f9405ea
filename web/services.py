"""What the web console works with, built by ``callconsent web`` from the config (``web`` does
not import ``callconsent``): the store, the recorder's custody and subject code (the same
objects the CLI uses), and the private keys when they could be unlocked."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import argon2

from recorder.governance.custody import Custody
from recorder.governance.subjects import Subjects
from recorder.store import audit
from recorder.store.audit import AuditContext, AuditReport
from recorder.store.db import Database
from recorder.store.numbers import NumberProtector
from recorder.vault.keystore import KeyStore, PrivateKeys
from web import dashboard
from web.accounts import Accounts
from web.kept import Kept
from web.sharing import ShareLinks

#: the audit page checks the whole chain again when it is opened this long after the last
#: check started (16 µs an audit row: a minute for 4 million rows, docs/web.md)
AUDIT_CHECK_MAX_AGE_S = 60.0


@dataclass(frozen=True)
class WebSettings:
    """``[web]`` of the config, as the web console needs it."""

    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    share_link_max_hours: int = 168
    login_max_failures: int = 5  # per user, then locked
    lockout_minutes: int = 15
    address_max_failures: int = 20  # per client address within lockout_minutes
    trusted_proxy: str = ""  # the reverse proxy's address: X-Forwarded-For/-Proto believed
    proxy_auth_header: str = ""  # e.g. Remote-User: SSO login, believed from the proxy only
    secure_cookies: str = "auto"  # auto (when the request came over TLS) | always | never
    max_query_bytes: int = 2048
    page_size: int = 50

    def is_trusted_proxy(self, address: str | None) -> bool:
        if not self.trusted_proxy or not address:
            return False
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.trusted_proxy)
        except ValueError:
            return False


@dataclass
class Services:
    db: Database
    ctx: AuditContext
    numbers: NumberProtector
    custody: Custody
    subjects: Subjects
    key_store: KeyStore
    settings: WebSettings = field(default_factory=WebSettings)
    keys: PrivateKeys | None = None
    keys_problem: str = "the private keys were not unlocked at start"
    #: dashboard facts the CLI computes (next purge, key runway, storage): name -> callable
    facts: dict[str, Callable[[], Any]] = field(default_factory=dict)
    hasher: argon2.PasswordHasher | None = None
    started_at: datetime | None = None
    #: the audit page's check of the whole chain and the dashboard's totals (web.kept)
    audit_check: Kept[AuditReport] = field(init=False, repr=False)
    dashboard_totals: Kept[dashboard.Totals] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        db = self.db

        def verify_all(_key: object) -> AuditReport:
            with db.read() as s:
                return audit.verify(s)

        self.audit_check = Kept(
            "audit-check", verify_all, max_age_s=AUDIT_CHECK_MAX_AGE_S, wait_s=dashboard.WAIT_S
        )
        self.dashboard_totals = dashboard.counter(db)

    @property
    def accounts(self) -> Accounts:
        return Accounts(self.db, self.ctx, self.hasher)

    @property
    def links(self) -> ShareLinks:
        return ShareLinks(self.db, self.ctx, self.settings.share_link_max_hours)
