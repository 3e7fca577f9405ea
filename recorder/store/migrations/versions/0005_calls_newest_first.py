"""the calls list's order: an index on calls (started_at, id)

The web console and the API list calls newest first with keyset pagination
(``ORDER BY started_at DESC, id DESC LIMIT n``, ``web/queries.py``). Without this index every
page scans and sorts the whole table: SQLite's plan was ``SCAN calls; USE TEMP B-TREE FOR
ORDER BY`` for every filter but the number (bench/web.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index("ix_calls_started_at_id", ["started_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index("ix_calls_started_at_id")
