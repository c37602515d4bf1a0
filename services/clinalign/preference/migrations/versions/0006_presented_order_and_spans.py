"""a task's label records the order its responses were shown in; an error annotation may
name the span of the response it concerns (the clinician console)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before have NULL: order not recorded, annotation of the whole response.
    with op.batch_alter_table("task_assignments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("presented_response_ids", sa.JSON(), nullable=True))
    with op.batch_alter_table("error_annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("span_start", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("span_end", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("error_annotations", schema=None) as batch_op:
        batch_op.drop_column("span_end")
        batch_op.drop_column("span_start")
    with op.batch_alter_table("task_assignments", schema=None) as batch_op:
        batch_op.drop_column("presented_response_ids")
