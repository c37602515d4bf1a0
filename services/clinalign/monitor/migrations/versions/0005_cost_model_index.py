"""outputs: an index on (cost_model_version, scored_at), for the cost model's figures on
clinicians' verdicts (each cost model's first scoring time; issue 21)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 22:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outputs_cost_model_version_scored_at",
            ["cost_model_version", "scored_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index("ix_outputs_cost_model_version_scored_at")
