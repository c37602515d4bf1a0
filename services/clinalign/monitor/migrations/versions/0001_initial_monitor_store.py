"""initial monitor store (the schema release c3d959f created with create_all)

Revision ID: 0001
Revises:
Create Date: 2026-12-07 10:05:19.971509
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "baselines",
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("outputs", sa.Integer(), nullable=False),
        sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_version"),
    )
    op.create_table(
        "outputs",
        sa.Column("output_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("prompt_template_version", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("reward_score", sa.Float(), nullable=True),
        sa.Column("in_baseline", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("output_id"),
    )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outputs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outputs_in_baseline"), ["in_baseline"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outputs_model_version"), ["model_version"], unique=False
        )

    op.create_table(
        "retraining_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("running", sa.String(length=1), nullable=True),
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot_hash", sa.String(length=64), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("served_policy", sa.String(length=64), nullable=False),
        sa.Column("reward_version", sa.String(length=64), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=False),
        sa.Column("promoted_version", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("running"),
    )
    with op.batch_alter_table("retraining_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retraining_runs_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_retraining_runs_snapshot_hash"), ["snapshot_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_retraining_runs_state"), ["state"], unique=False)

    op.create_table(
        "flags",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("output_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("category", sa.Integer(), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("corrected_text", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("flagged_by", sa.String(length=128), nullable=False),
        sa.Column("resolved_by", sa.String(length=128), nullable=False),
        sa.Column("resolution_reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["output_id"], ["outputs.output_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flags_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_flags_model_version"), ["model_version"], unique=False)
        batch_op.create_index(batch_op.f("ix_flags_output_id"), ["output_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_flags_status"), ["status"], unique=False)

    op.create_table(
        "retraining_run_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("ref", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["retraining_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "name"),
    )
    with op.batch_alter_table("retraining_run_steps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retraining_run_steps_run_id"), ["run_id"], unique=False
        )

    op.create_table(
        "retraining_triggers",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["retraining_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("retraining_triggers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retraining_triggers_run_id"), ["run_id"], unique=False)

    op.create_table(
        "flag_feedback",
        sa.Column("flag_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.String(length=64), nullable=False),
        sa.Column("prompt_id", sa.String(length=64), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_ids", sa.Text(), nullable=False),
        sa.Column("correction_id", sa.String(length=64), nullable=False),
        sa.Column("task_ids", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["flag_id"], ["flags.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flag_id"),
    )
    with op.batch_alter_table("flag_feedback", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_flag_feedback_delivered_at"), ["delivered_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_flag_feedback_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_flag_feedback_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("flag_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flag_feedback_state"))
        batch_op.drop_index(batch_op.f("ix_flag_feedback_run_id"))
        batch_op.drop_index(batch_op.f("ix_flag_feedback_delivered_at"))

    op.drop_table("flag_feedback")
    with op.batch_alter_table("retraining_triggers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retraining_triggers_run_id"))

    op.drop_table("retraining_triggers")
    with op.batch_alter_table("retraining_run_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retraining_run_steps_run_id"))

    op.drop_table("retraining_run_steps")
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flags_status"))
        batch_op.drop_index(batch_op.f("ix_flags_output_id"))
        batch_op.drop_index(batch_op.f("ix_flags_model_version"))
        batch_op.drop_index(batch_op.f("ix_flags_created_at"))

    op.drop_table("flags")
    with op.batch_alter_table("retraining_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retraining_runs_state"))
        batch_op.drop_index(batch_op.f("ix_retraining_runs_snapshot_hash"))
        batch_op.drop_index(batch_op.f("ix_retraining_runs_created_at"))

    op.drop_table("retraining_runs")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_model_version"))
        batch_op.drop_index(batch_op.f("ix_outputs_in_baseline"))
        batch_op.drop_index(batch_op.f("ix_outputs_created_at"))

    op.drop_table("outputs")
    op.drop_table("baselines")
