"""idempotency keys are the caller's own and remember their request (issue 23)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before keep their raw key and an empty digest: their own caller may
    # still replay them (store.idempotent), with any request.
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request_hash", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("request_hash")
