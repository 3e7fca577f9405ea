"""Schema migrations (alembic), run by ``callconsent db upgrade`` and at daemon start-up.

``sql/sqlite.sql`` and ``sql/postgresql.sql`` are this module's offline output
(``callconsent db sql --dialect D``), for DBAs who apply DDL themselves.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from recorder.store.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
OFFLINE_URLS = {"sqlite": "sqlite://", "postgresql": "postgresql+psycopg://"}


def alembic_config(url: str, output: io.StringIO | None = None) -> Config:
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def offline_sql(dialect: str) -> str:
    """The DDL of every migration for ``dialect``, as alembic's offline (``--sql``) mode
    writes it."""
    if dialect not in OFFLINE_URLS:
        raise ValueError(f"dialect must be one of {', '.join(OFFLINE_URLS)}")
    out = io.StringIO()
    command.upgrade(alembic_config(OFFLINE_URLS[dialect], out), "head", sql=True)
    return out.getvalue()
