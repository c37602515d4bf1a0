"""serving state: who changed it and why; canaries (issue 22)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 10:06:02.039182
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "serving_canaries",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("traffic_share", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kind"),
    )
    with op.batch_alter_table("serving_events", schema=None) as batch_op:
        # Changes made before this revision name no principal or reason: "".
        batch_op.add_column(
            sa.Column("principal", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("serving_events", schema=None) as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("principal")

    op.drop_table("serving_canaries")
