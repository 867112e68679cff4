"""`generations` stops copying its events' code: each row names its winning events (`shown_event_pk`,
`decision_event_pk`, `edited_event_pk`), whose payloads hold the prompt, messages, completion, prefix, suffix,
accepted and final text (feedback/texts.py reads them). Existing rows get the ids of the events their
`*_event_id` name; the downgrade copies the code back out of those payloads.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_POINTERS = (
    ("shown_event_pk", "shown_event_id"),
    ("decision_event_pk", "decision_event_id"),
    ("edited_event_pk", "edited_event_id"),
)
_TEXTS = ("prompt", "completion", "prefix", "suffix", "accepted_text", "final_text")


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        for pointer, _ in _POINTERS:
            batch_op.add_column(sa.Column(pointer, sa.BigInteger(), nullable=True))
    # (project_id, event_id) is unique in feedback_events: one event per pointer.
    for pointer, event_id in _POINTERS:
        op.execute(
            f"UPDATE generations SET {pointer} = (SELECT e.id FROM feedback_events e"
            f" WHERE e.project_id = generations.project_id AND e.event_id = generations.{event_id})"
            f" WHERE {event_id} IS NOT NULL"
        )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        for name in (*_TEXTS, "messages"):
            batch_op.drop_column(name)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("generations", schema=None) as batch_op:
        for name in _TEXTS:
            batch_op.add_column(sa.Column(name, sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "messages", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
            )
        )

    if pg:  # as revision 0001 made them
        for name in (*_TEXTS, "messages"):
            op.execute(
                f"DO $$ BEGIN ALTER TABLE generations ALTER COLUMN {name} SET COMPRESSION lz4; "
                "EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL; END $$"
            )

    def field(pointer: str, name: str, *, as_json: bool = False) -> str:
        if pg:
            value = f"CAST(e.payload AS jsonb) {'->' if as_json else '->>'} '{name}'"
            value = f"NULLIF({value}, 'null'::jsonb)" if as_json else value
        else:
            value = f"json_extract(e.payload, '$.{name}')"
        return f"(SELECT {value} FROM feedback_events e WHERE e.id = generations.{pointer})"

    shown = {name: field("shown_event_pk", name) for name in ("prompt", "completion", "prefix", "suffix")}
    op.execute(
        "UPDATE generations SET "
        + ", ".join(f"{name} = {value}" for name, value in shown.items())
        + f", messages = {field('shown_event_pk', 'messages', as_json=True)}"
        + f", accepted_text = {field('decision_event_pk', 'accepted_text')}"
        + " WHERE NOT excluded"
    )
    op.execute(
        f"UPDATE generations SET final_text = CASE WHEN edited_event_pk IS NOT NULL"
        f" THEN {field('edited_event_pk', 'final_text')}"
        " WHEN decision = 'accepted' THEN coalesce(accepted_text, completion) END WHERE NOT excluded"
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        for pointer, _ in reversed(_POINTERS):
            batch_op.drop_column(pointer)
