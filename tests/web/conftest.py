"""A web console over a store with keys, users of every role, and calls of two agents with
encrypted recordings."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2
import pg
import pyotp
import pytest
import sqlalchemy as sa
from recstore import Rig, make_rig, write_wav
from starlette.testclient import TestClient

import consent_ivr as c
from callconsent import config as config_mod
from callconsent.app import App
from callconsent.recordings import custody, subjects
from recorder.store import migrate
from recorder.store.db import Database
from web.app import build
from web.auth import SESSION_COOKIE, Sessions
from web.services import Services, WebSettings

PASSWORD = "correct horse battery"


def next_code(secret: str) -> str:
    """The TOTP code of the 30-second step after the current one: accepted (a phone's clock
    a little ahead) where the current step's code was used already."""
    return pyotp.TOTP(secret).at(time.time() + 30)


NUMBER = "+4915112345678"
ROLE_USERS = {"agent": "alice", "supervisor": "sam", "dpo": "dora", "admin": "adam"}
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass
class World:
    rig: Rig
    services: Services
    app: Any
    calls: dict[str, str] = field(default_factory=dict)  # agent -> call id
    recordings: dict[str, str] = field(default_factory=dict)  # agent -> recording id
    wavs: dict[str, bytes] = field(default_factory=dict)  # recording id -> plaintext

    def client(self, who: str | None = None) -> TestClient:
        """A client (https, so Secure cookies flow) signed in as ``who`` (a role or a name)."""
        client = TestClient(self.app, base_url="https://testserver", follow_redirects=False)
        client.csrf = ""  # type: ignore[attr-defined]
        if who is not None:
            client.csrf = self.sign_in(client, ROLE_USERS.get(who, who))  # type: ignore[attr-defined]
        return client

    def sign_in(self, client: TestClient, name: str) -> str:
        person = self.services.accounts.get(name)
        assert person is not None
        raw, csrf = Sessions(self.services).create(person, "testclient")
        client.cookies.set(SESSION_COOKIE, raw)
        return csrf


def add_call(
    rig: Rig,
    agent: str | None,
    *,
    campaign: str = "sales",
    seconds: float = 0.5,
    number: str = NUMBER,
) -> tuple[str, str, bytes]:
    """A call with a consent decision and one encrypted recording: (call, recording, WAV)."""
    ledger = rig.app.ledger
    ref = ledger.open_call(
        pbx="asterisk",
        pbx_call_id=str(uuid.uuid4())[:20],
        campaign=campaign,
        number=number,
        agent=agent,
    )
    machine = c.ConsentCall(c.Policy())
    machine.handle(c.CallAnswered())
    actions = machine.handle(c.DigitReceived("1"))
    evidence = next(a for a in actions if isinstance(a, c.LogConsent)).evidence
    ledger.log_consent(ref.id, evidence, prompt_digests={"consent": "ab" * 32})
    rid = str(uuid.uuid4())
    path = rig.app.spool.path_for(rid, "wav")
    ledger.recording_started(
        ref.id, rid, spool_path=str(path), fmt="wav", channels=1, sample_rate=8000
    )
    wav = write_wav(path, seconds)
    ledger.call_ended(ref.id)
    ledger.recording_closed(rid)  # no worker pool: finalized now
    return ref.id, rid, wav


#: ``@ON_BOTH_STORES`` on a test that uses ``world``: it runs on SQLite and on the PostgreSQL
#: the suite starts (marked ``postgres``); other tests run on SQLite only
ON_BOTH_STORES = pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """The store's dialect: SQLite unless a test is parametrized with ON_BOTH_STORES."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def web_pg_database(pg_server: str) -> Iterator[str]:
    """One database migrated once to the head for the web tests on PostgreSQL, emptied before
    each (TRUNCATE: a tenth of the time of a new database or a migration per test)."""
    with pg.fresh_database(pg_server) as url:
        db = Database(url)
        migrate.upgrade(db)
        db.dispose()
        yield url


def _emptied(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            tables = [
                name for name in sa.inspect(conn).get_table_names() if name != "alembic_version"
            ]
            conn.exec_driver_sql(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )
    finally:
        engine.dispose()
    return url


@pytest.fixture
def app(config_file: Path, store: str, request: pytest.FixtureRequest) -> Iterator[App]:
    """The root conftest's app (a config in the test's temp dir), on ``store``."""
    if store == "sqlite":
        application = App.open(config_mod.load(config_file))
        yield application
        application.close()
        return
    url = _emptied(request.getfixturevalue("web_pg_database"))
    with config_file.open("a") as f:
        f.write(f'\n[database]\nurl = "{url}"\n')
    application = App.open(config_mod.load(config_file))
    assert application.db.dialect == "postgresql"
    yield application
    application.close()


@pytest.fixture
def world(app: App) -> Iterator[World]:
    rig = make_rig(app)
    services = Services(
        db=app.db,
        ctx=app.audit_ctx,
        numbers=app.numbers,
        custody=custody(app),
        subjects=subjects(app),
        key_store=rig.keys.store,
        keys=rig.keys,
        settings=WebSettings(),
        hasher=CHEAP,
    )
    # a page waits for a background pass (web.kept) this long, not 1 s: the audit check starts
    # a process, which a loaded machine may take longer than 1 s to do (the tests of the wait
    # itself set it short)
    services.audit_check.wait_s = services.dashboard_totals.wait_s = 30
    for role, name in ROLE_USERS.items():
        services.accounts.add(name, role, PASSWORD, actor="test")
    services.accounts.add("bob", "agent", PASSWORD, actor="test")
    w = World(rig, services, build(services))
    for agent, seconds in (("alice", 15.0), ("bob", 0.3)):
        call_id, rid, wav = add_call(rig, agent, seconds=seconds)
        w.calls[agent], w.recordings[agent], w.wavs[rid] = call_id, rid, wav
    yield w


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)
