"""outputs carry their drafting task, for the clinician console's listing

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 16:13:13
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Outputs recorded before it have no task: "", as from a reporter that does not say.
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("task", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_outputs_task"), ["task"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_task"))
        batch_op.drop_column("task")
