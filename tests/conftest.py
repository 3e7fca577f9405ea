"""Shared fixtures: stores on SQLite and on a real PostgreSQL, a config in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pg
import pytest

from callconsent import config as config_mod
from callconsent.app import App
from recorder.store import migrate
from recorder.store.audit import AuditContext
from recorder.store.db import Database
from recorder.store.ledger import Ledger
from recorder.store.numbers import NumberProtector

TEST_SECRET = bytes(range(32))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    try:
        with pg.server() as url:
            yield url
    except pg.PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_cluster() -> Iterator[pg.Cluster]:
    """A private PostgreSQL cluster of the test's own, to stop and start (the outage tests)."""
    try:
        with pg.cluster() as found:
            yield found
    except pg.PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database, once per dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'callconsent.db'}"
        return
    server = request.getfixturevalue("pg_server")
    with pg.fresh_database(server) as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def numbers() -> NumberProtector:
    return NumberProtector(TEST_SECRET, default_region="DE")


@pytest.fixture
def ledger(db: Database, numbers: NumberProtector) -> Ledger:
    return Ledger(db, numbers, AuditContext(node="pbx-test", os_user="tester"))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config that keeps every file of the test in its temp dir."""
    path = tmp_path / "callconsent.toml"
    path.write_text(
        '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n\n[numbers]\ndefault_region = "DE"\n'
    )
    return path


@pytest.fixture
def app(config_file: Path) -> Iterator[App]:
    application = App.open(config_mod.load(config_file))
    yield application
    application.close()
