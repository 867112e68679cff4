"""Fold the event log into `generations` off the ingest path: the fold queue, and what ingest did to each event
(redacted secrets, excluded path), which the fold adds up. Existing rows are backfilled from their generations.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 05:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fold_queue",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "generation_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_fold_queue_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fold_queue")),
    )
    with op.batch_alter_table("fold_queue", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fold_queue_project_id"), ["project_id"], unique=False)

    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secrets", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("excluded", sa.Boolean(), server_default=sa.false(), nullable=False))

    # A fold recomputes a generation from all of its events, so the events stored before this revision get what
    # their generation holds: its exclusion on its `generation` events, its secret counts on its first event.
    op.execute(
        "UPDATE feedback_events SET excluded = true WHERE type = 'generation' AND EXISTS (SELECT 1 FROM generations g"
        " WHERE g.project_id = feedback_events.project_id AND g.generation_id = feedback_events.generation_id"
        " AND g.excluded)"
    )
    op.execute(
        "UPDATE feedback_events SET secrets = (SELECT CAST(CAST(g.secrets_redacted AS TEXT) AS "
        + ("json" if op.get_bind().dialect.name == "postgresql" else "TEXT")
        + ") FROM generations g WHERE g.project_id = feedback_events.project_id"
        " AND g.generation_id = feedback_events.generation_id) WHERE id IN (SELECT min(e.id) FROM feedback_events e"
        " JOIN generations g ON g.project_id = e.project_id AND g.generation_id = e.generation_id"
        " WHERE g.secrets_redacted IS NOT NULL AND CAST(g.secrets_redacted AS TEXT) NOT IN ('{}', 'null')"
        " GROUP BY e.project_id, e.generation_id)"
    )


def downgrade() -> None:
    queued = op.get_bind().execute(sa.text("SELECT count(*) FROM fold_queue")).scalar()
    if queued:
        raise RuntimeError(
            f"fold_queue holds {queued} rows of events not yet folded into generations; run `editloop db fold` first"
        )
    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.drop_column("excluded")
        batch_op.drop_column("secrets")

    with op.batch_alter_table("fold_queue", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fold_queue_project_id"))

    op.drop_table("fold_queue")
