"""a TOTP code is accepted once: users.totp_last_step

A second factor's code was accepted as often as it was typed within its 90 seconds (the
current 30-second step and one either side): someone who saw it typed, with the password,
could log in with it too. RFC 6238 (5.2) asks the verifier to refuse a code once accepted.
The step of the last code accepted is kept on the user's row; login, enrolment and turning
the factor off refuse a code of that step or an earlier one (``web.totp.fresh_step``). A
nullable column: SQLite adds it in place, without copying the table.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("totp_last_step")
