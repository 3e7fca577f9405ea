"""the audit log by retention: an index on audit_log (seq) for retention's rows

The audit page and API filter the log by actor, newest first (``web/queries.py``). Migration
0007's index by actor leaves out retention's rows (it writes one per purged recording). In a
store that has not purged yet, or seldom (a year's retention, a new installation), those rows
are none or few, and the log filtered by retention walked every row to find them, as the log
by a person did before 0007. Retention writes its rows in its pass, never on the daemon's hot
path; the daemon's rows are not in this index either.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# models.RETENTION_ONLY when this revision was written (a migration does not follow the models)
RETENTION_ONLY = "actor = 'retention'"


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_log_retention",
            ["seq"],
            unique=False,
            sqlite_where=sa.text(RETENTION_ONLY),
            postgresql_where=sa.text(RETENTION_ONLY),
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_retention")
