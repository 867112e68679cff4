"""The console: generations per day (a rollup the console refreshes incrementally) and indexes for its lists.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "generation_days",
        sa.Column("project_id", BIG_ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("generations", sa.Integer(), nullable=False),
        sa.Column("distance_n", sa.Integer(), nullable=False),
        sa.Column("distance_sum", sa.Float(), nullable=False),
        sa.Column("distance_sumsq", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_generation_days_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "day", "model", "outcome", name=op.f("pk_generation_days")),
    )
    op.create_table(
        "generation_day_marks",
        sa.Column("project_id", BIG_ID, nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_generation_day_marks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_generation_day_marks")),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index("ix_generations_project_shown", ["project_id", "shown_at"], unique=False)
        batch_op.create_index("ix_generations_project_model_id", ["project_id", "model", "id"], unique=False)
        batch_op.create_index("ix_generations_project_user_id", ["project_id", "user", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_project_user_id")
        batch_op.drop_index("ix_generations_project_model_id")
        batch_op.drop_index("ix_generations_project_shown")
    op.drop_table("generation_day_marks")
    op.drop_table("generation_days")
