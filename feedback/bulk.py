"""Bulk writes of the ingest path.

On Postgres, a batch of rows goes in as one JSON document (serialized by orjson) unpacked by `json_to_recordset`:
a short statement whose text never changes, so psycopg parses it once and the server can reuse its plan, whatever
the batch size. SQLAlchemy's multi-row VALUES statements are too long for psycopg's query cache, so they are
re-parsed on every batch, and arrays of text parameters are escaped by a regex in Python; each of those costs more
than the whole database work. SQLite takes the same rows through SQLAlchemy Core."""

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import Table

from core.db import dialect_insert


def _pg_type(column: Any) -> str:
    """The Postgres type of a column, without length (arrays of it are cast to it)."""
    compiled = column.type.compile(dialect=postgresql.dialect()).lower()
    return compiled.split("(")[0].replace("varchar", "text")


class BulkWriter:
    """`INSERT ... SELECT FROM json_to_recordset(...) ON CONFLICT ...` for one table and a fixed list of columns."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        conflict: Sequence[str],
        update: Sequence[str] = (),
        returning: str | None = None,
    ) -> None:
        self.table, self.columns, self.conflict, self.update = table, list(columns), list(conflict), list(update)
        self.returning = returning
        types = {name: _pg_type(table.c[name]) for name in self.columns}
        names = ", ".join(f'"{c}"' for c in self.columns)
        record = ", ".join(f'"{c}" {types[c]}' for c in self.columns)
        on_conflict = f"ON CONFLICT ({', '.join(self.conflict)}) " + (
            "DO UPDATE SET " + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in self.update)
            if self.update
            else "DO NOTHING"
        )
        self._select = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM json_to_recordset(CAST(:rows AS json)) "
        self._record, self._on_conflict = f"AS r({record}) ", on_conflict
        # Without its RETURNING clause, for statements that build on it (a data-modifying CTE).
        self.insert_sql = self.insert_sql_where(None)
        self.pg_sql = text(self.insert_sql + (f' RETURNING "{returning}"' if returning else ""))
        self._pg_dbapi_sql = dbapi_sql(self.pg_sql)
        self._names = frozenset(self.columns)

    def insert_sql_where(self, condition: str | None) -> str:
        """`insert_sql`, inserting only when `condition` (SQL over the statement's other CTEs) holds."""
        where = f"WHERE {condition} " if condition else ""
        return self._select + self._record + where + self._on_conflict

    def document(self, rows: list[dict[str, Any]]) -> str:
        """The rows as the JSON document that `insert_sql` takes as `:rows`. Rows that hold exactly the writer's
        columns are serialized as they are (copying each into a dict of its columns cost more than serializing)."""
        if all(r.keys() == self._names for r in rows):
            return orjson.dumps(rows).decode()
        return orjson.dumps([{c: r[c] for c in self.columns} for r in rows]).decode()

    def write(self, session: Session, rows: list[dict[str, Any]]) -> list[Any]:
        """Insert (or upsert) rows in the given order; returns the `returning` column of the rows written."""
        if not rows:
            return []
        if session.get_bind().dialect.name == "postgresql":
            written = pg_fetch(session, self._pg_dbapi_sql, {"rows": self.document(rows)}, self.returning is not None)
            return [value for (value,) in written]
        stmt = dialect_insert(session, self.table)
        if self.update:
            stmt = stmt.on_conflict_do_update(
                index_elements=self.conflict, set_={c: stmt.excluded[c] for c in self.update}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=self.conflict)
        if self.returning:
            return list(session.scalars(stmt.returning(self.table.c[self.returning]), rows))
        session.execute(stmt, rows)
        return []


def dbapi_sql(statement: Any) -> str:
    """A `text()` statement in psycopg's own parameter style (`%(name)s`), for `pg_fetch`."""
    return str(statement.compile(dialect=psycopg.dialect()))


def pg_fetch(session: Session, sql: str, params: dict[str, Any], rows: bool = True) -> Sequence[Any]:
    """Run a statement in psycopg's parameter style (`dbapi_sql`, or a statement compiled for the psycopg dialect)
    on the session's psycopg connection, inside its transaction, past SQLAlchemy's execution and result layers (on
    the ingest path they cost as much as the database work). Returns psycopg's plain tuples (`rows`), or nothing for
    a statement that returns none."""
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall() if rows else []
    finally:
        cursor.close()
