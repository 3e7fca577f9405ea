"""share-link tickets and per-address login failures in the store (the web console, issue 16)

Both were kept in one ``callconsent web`` process's memory, so a second process behind the
same proxy did not know a ticket the first had handed out (the audio of an opened share link
was refused there) and counted its own login failures per address. Neither table touches the
evidence or the audit log.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share_tickets",
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"], ["share_links.id"], name=op.f("fk_share_tickets_link_id_share_links")
        ),
        sa.PrimaryKeyConstraint("ticket_hash", name=op.f("pk_share_tickets")),
    )
    with op.batch_alter_table("share_tickets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_share_tickets_link_id"), ["link_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_share_tickets_expires_at"), ["expires_at"], unique=False
        )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_failures_at"), ["at"], unique=False)
        batch_op.create_index("ix_login_failures_address_at", ["address", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failures_address_at")
        batch_op.drop_index(batch_op.f("ix_login_failures_at"))
    op.drop_table("login_failures")
    with op.batch_alter_table("share_tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_share_tickets_expires_at"))
        batch_op.drop_index(batch_op.f("ix_share_tickets_link_id"))
    op.drop_table("share_tickets")
