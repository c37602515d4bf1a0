"""error annotations carry a severity (issue 21: the cost model's labels)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before have no severity: "" (not given), as an annotation without one.
    with op.batch_alter_table("error_annotations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("severity", sa.String(length=16), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("error_annotations", schema=None) as batch_op:
        batch_op.drop_column("severity")
