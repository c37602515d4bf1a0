"""an annotator is linked to the principal it is (issue 23: people label only as themselves)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Annotators registered before are unlinked: no person labels as them until a
    # clinician registers themselves or an admin links the record.
    with op.batch_alter_table("annotators", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint("uq_annotators_subject", ["subject"])


def downgrade() -> None:
    with op.batch_alter_table("annotators", schema=None) as batch_op:
        batch_op.drop_constraint("uq_annotators_subject", type_="unique")
        batch_op.drop_column("subject")
