"""Partitioned row builds: one row per partition, claimed by a conditional update (feedback/partitions.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dataset_build_partitions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("project_id", BIG_ID, nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", JSON, nullable=True),
        sa.Column("build_id", BIG_ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["dataset_builds.id"],
            name=op.f("fk_dataset_build_partitions_build_id_dataset_builds"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_dataset_build_partitions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_build_partitions")),
        sa.UniqueConstraint("plan", "part", name=op.f("uq_dataset_build_partitions_plan_part")),
    )
    with op.batch_alter_table("dataset_build_partitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_build_partitions_plan"), ["plan"], unique=False)
        batch_op.create_index(batch_op.f("ix_dataset_build_partitions_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_table("dataset_build_partitions")
