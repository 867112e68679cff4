"""Reading a generation's code. `generations` does not copy it: each row names its winning events (`shown_event_pk`,
`decision_event_pk`, `edited_event_pk`: `feedback_events.id`), and the code stays in their scrubbed payloads, once.

A reader selects its columns with `PAYLOADS` (each event's payload text, looked up by primary key within the row's
project) and turns the three payload texts into the code fields with `code`: the same values that
the fold computed in memory (`feedback.join.code_of`). A copy of the code in `generations` would cost Postgres
about as much again as storing the events (benchmarks/README.md, ingest)."""

from typing import Any, cast

import orjson
from sqlalchemy import Table, Text, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.sql import Select

from feedback.join import code_of
from feedback.models import FeedbackEvent, Generation

_GEN = cast(Table, Generation.__table__)
_EVENTS = cast(Table, FeedbackEvent.__table__)
SHOWN, DECIDED, EDITED = (_EVENTS.alias(name) for name in ("shown", "decided", "edited"))


def _payload(event: Any, pk: Any, name: str) -> Any:
    """The payload text of the event a row names, as a correlated scalar subquery: a primary-key lookup per row.
    Postgres evaluates it after the ORDER BY and LIMIT of the query around it, for the rows returned only (outer
    joins made it sort the payloads of every row that matched, and join the project's whole event log by hash)."""
    # `json` as text: parsed by orjson in `code`, not by SQLAlchemy's JSON type (the stdlib's json).
    found = select(sql_cast(event.c.payload, Text)).where(event.c.id == pk, event.c.project_id == _GEN.c.project_id)
    return found.scalar_subquery().label(name)


# The `generation` event's, the decision's and the edit's.
PAYLOADS = (
    _payload(SHOWN, _GEN.c.shown_event_pk, "shown_payload"),
    _payload(DECIDED, _GEN.c.decision_event_pk, "decided_payload"),
    _payload(EDITED, _GEN.c.edited_event_pk, "edited_payload"),
)


def select_with_code(*columns: Any) -> Select[Any]:
    """`SELECT columns, the three payload texts FROM generations`."""
    return select(*columns, *PAYLOADS)


def _load(payload: str | None) -> dict[str, Any] | None:
    return None if payload is None else orjson.loads(payload)


def code(
    excluded: bool,
    decision: str | None,
    edited: bool,
    shown_payload: str | None,
    decided_payload: str | None,
    edited_payload: str | None,
) -> dict[str, Any]:
    """The code fields (`feedback.join.ROW_CODE`) of a row read with `PAYLOADS`: its exclusion, its decision, whether
    it has a winning edit, and the three payload texts."""
    if excluded:  # no code, whatever the payloads hold
        return code_of(True, decision, edited, None, None, None)
    return code_of(False, decision, edited, _load(shown_payload), _load(decided_payload), _load(edited_payload))


def code_of_mapping(row: dict[str, Any]) -> dict[str, Any]:
    """`code` for a row read as a mapping that holds `excluded`, `decision`, `edited_event_pk` and the payloads."""
    return code(
        row["excluded"],
        row["decision"],
        row["edited_event_pk"] is not None,
        row["shown_payload"],
        row["decided_payload"],
        row["edited_payload"],
    )
