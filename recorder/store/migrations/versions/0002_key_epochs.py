"""key epochs: the public keys recordings are sealed to, one per expiry week

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_epochs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("suite", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("expires_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_epochs")),
    )
    with op.batch_alter_table("key_epochs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_key_epochs_expires_from"), ["expires_from"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("key_epochs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_epochs_expires_from"))
    op.drop_table("key_epochs")
