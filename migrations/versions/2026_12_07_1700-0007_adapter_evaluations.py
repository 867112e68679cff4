"""Later evaluations of adapter versions against the production of their time (the promotion gate's paired
comparison when production has moved since a version was trained).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "adapter_evaluations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("production_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "metrics", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["production_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_adapter_evaluations_production_version_id_adapter_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_adapter_evaluations_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["adapter_versions.id"], name=op.f("fk_adapter_evaluations_version_id_adapter_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_evaluations")),
    )
    with op.batch_alter_table("adapter_evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapter_evaluations_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_evaluations_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adapter_evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_evaluations_version_id"))
        batch_op.drop_index(batch_op.f("ix_adapter_evaluations_project_id"))
    op.drop_table("adapter_evaluations")
