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
from recorder.store.audit import AuditContext
from recorder.store.db import Database
from recorder.store.numbers import NumberProtector
from recorder.vault.keystore import KeyStore, PrivateKeys
from web import dashboard
from web.accounts import Accounts
from web.kept import Kept, in_a_process
from web.sharing import ShareLinks

#: the audit page checks the whole chain again when it is opened this long after the last
#: check started (or ten times as long as it took: web.kept.BUSY_SHARE; 16-26 µs an audit
#: row, 25.7 s for 1,000,000 rows, docs/web.md)
AUDIT_CHECK_MAX_AGE_S = 60.0


@dataclass(frozen=True)
class AuditCheck:
    """What the audit page shows of ``audit verify``: the counts and the first problems. The
    whole report can name a row for every row of a table (a million), and handing that back
    from the check's process held the GIL for seconds."""

    rows: int
    problems: list[tuple[int, str]]  # the first SHOWN of the chain's
    problem_count: int
    content: list[str]  # the first SHOWN of the evidence's and recordings'
    content_count: int
    sealed_rows: int

    SHOWN = 20

    @property
    def ok(self) -> bool:
        return not self.problem_count and not self.content_count


def verify_store(url: str) -> AuditCheck:
    """``audit verify`` of the store at ``url`` (run in the audit check's own process)."""
    db = Database(url)
    try:
        with db.read() as s:
            report = audit.verify(s)
    finally:
        db.dispose()
    shown = AuditCheck.SHOWN
    return AuditCheck(
        rows=report.rows,
        problems=report.problems[:shown],
        problem_count=len(report.problems),
        content=[str(problem) for problem in report.content[:shown]],
        content_count=len(report.content),
        sealed_rows=report.sealed_rows,
    )


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
    audit_check: Kept[AuditCheck] = field(init=False, repr=False)
    dashboard_totals: Kept[dashboard.Totals] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        url = self.db.url

        def verify_all(_key: object) -> AuditCheck:
            # In a process of its own: the check is Python busy for as long as the log is
            # long, and in a thread of this one it held the GIL the requests need (the calls
            # page's p99 went from 2.6 to 78.7 ms while it ran, docs/web.md). A process for
            # each check, at most one a minute: 0.5 s to start, nothing to manage in between.
            return in_a_process(verify_store, url)

        self.audit_check = Kept(
            "audit-check", verify_all, max_age_s=AUDIT_CHECK_MAX_AGE_S, wait_s=dashboard.WAIT_S
        )
        self.dashboard_totals = dashboard.counter(self.db)

    @property
    def accounts(self) -> Accounts:
        return Accounts(self.db, self.ctx, self.hasher)

    @property
    def links(self) -> ShareLinks:
        return ShareLinks(self.db, self.ctx, self.settings.share_link_max_hours)
