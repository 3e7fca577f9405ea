"""the audit log by person: an index on audit_log (actor, seq) for rows not written by the
daemon or retention

The audit page and API filter the log by actor, newest first (``web/queries.py``). With no
index on actor that walked the whole log backwards for a person with few rows: 1.16 s for
1,000,000 rows on SQLite (bench/web.py's store). The index leaves out the actors that write a
row for every call and every purged recording (``models.BULK_ACTORS``), so the daemon's hot
path does not maintain it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# models.PEOPLE_ONLY when this revision was written (a migration does not follow the models)
PEOPLE_ONLY = "actor NOT IN ('callconsent', 'retention')"


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_log_person_actor",
            ["actor", "seq"],
            unique=False,
            sqlite_where=sa.text(PEOPLE_ONLY),
            postgresql_where=sa.text(PEOPLE_ONLY),
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_person_actor")
