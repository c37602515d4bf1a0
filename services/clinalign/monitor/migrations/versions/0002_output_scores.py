"""outputs carry their cost and the versions that scored them (issue 21)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 10:46:25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "reward_model_version", sa.String(length=64), nullable=False, server_default=""
            )
        )
        batch_op.add_column(
            sa.Column("cost_model_version", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("score_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.create_index(batch_op.f("ix_outputs_scored_at"), ["scored_at"], unique=False)
    # Outputs recorded with a score by their caller are scored; the others (and those
    # whose text retention erased, which cannot be) are left for the scoring task.
    op.execute(
        "UPDATE outputs SET scored_at = recorded_at WHERE reward_score IS NOT NULL OR text IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_scored_at"))
        batch_op.drop_column("score_attempts")
        batch_op.drop_column("scored_at")
        batch_op.drop_column("cost_model_version")
        batch_op.drop_column("reward_model_version")
        batch_op.drop_column("cost")
