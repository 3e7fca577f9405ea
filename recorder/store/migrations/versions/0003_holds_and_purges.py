"""legal-hold keys, purge reasons, and the index retention walks

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("key_epochs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=8), server_default="expiry", nullable=False)
        )
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purge_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("hold_key", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_recordings_state_expires_at", ["state", "expires_at"], unique=False
        )
        batch_op.drop_index("ix_recordings_state")  # the pair above serves state alone too


def downgrade() -> None:
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.create_index("ix_recordings_state", ["state"], unique=False)
        batch_op.drop_index("ix_recordings_state_expires_at")
        batch_op.drop_column("hold_key")
        batch_op.drop_column("purge_reason")
    with op.batch_alter_table("key_epochs", schema=None) as batch_op:
        batch_op.drop_column("purpose")
