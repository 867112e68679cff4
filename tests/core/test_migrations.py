"""Migrations go up to head and back down to base, and head matches the ORM models exactly."""

import uuid

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import core.audit  # noqa: F401
import core.projects  # noqa: F401
import feedback.models  # noqa: F401
import feedback.rights_models  # noqa: F401
import trainers.models  # noqa: F401
from core import migrate
from core.db import Base
from tests.conftest import PG_ADMIN


@pytest.fixture(params=["postgres", "sqlite"])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = f"editloop_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    yield url
    from core.db import get_engine

    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_up_down_and_models_match(fresh_url):
    migrate.upgrade(fresh_url)
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    assert {"projects", "api_keys", "feedback_events", "generations"} <= set(inspect(engine).get_table_names())
    migrate.downgrade(fresh_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(fresh_url)
    assert migrate.current_revision(fresh_url) == migrate.head_revision(fresh_url)
    engine.dispose()


# Revision 0005 moved the code out of `generations` into the events it came from: rows written before it keep
# their code, through the upgrade and back down.
_AT = "2026-11-25 06:00:00"
_EVENTS = [  # id, generation, event id, type, payload
    (1, "g1", "e1", "generation", {"prompt": "def f():\n", "completion": "    return 1\n", "suffix": "\n"}),
    (2, "g1", "e2", "accepted", {"accepted_text": "    return"}),
    (3, "g2", "e3", "generation", {"messages": [{"role": "user", "content": "hi"}], "completion": "x = 1\n"}),
    (4, "g2", "e4", "edited", {"final_text": "x = 2\n"}),
    (5, "g3", "e5", "generation", {"model": "base"}),  # excluded: ingest kept no code
    (6, "g3", "e6", "rejected", {"reason": "no"}),
    (7, "g4", "e7", "generation", {"prompt": "p", "completion": "c", "prefix": "# a\n"}),
    (8, "g4", "e8", "accepted", {}),
]
_CODE = {  # what 0004's fold wrote: prompt, messages, completion, prefix, suffix, accepted_text, final_text
    "g1": ("def f():\n", None, "    return 1\n", None, "\n", "    return", "    return"),
    "g2": (None, [{"role": "user", "content": "hi"}], "x = 1\n", None, None, None, "x = 2\n"),
    "g3": (None, None, None, None, None, None, None),
    "g4": ("p", None, "c", "# a\n", None, None, "c"),
}
_NAMES = ("prompt", "messages", "completion", "prefix", "suffix", "accepted_text", "final_text")
_WINNERS = {  # shown, decision, edited event ids; outcome; excluded
    "g1": ("e1", "e2", None, "accepted", False),
    "g2": ("e3", None, "e4", "edited", False),
    "g3": ("e5", "e6", None, "rejected", True),
    "g4": ("e7", "e8", None, "accepted", False),
}


def test_generation_code_moves_into_the_events_and_back(fresh_url):
    import json

    from sqlalchemy import text

    from feedback import texts
    from feedback.models import Generation

    migrate.upgrade(fresh_url, "0004")
    engine = create_engine(fresh_url)
    with engine.begin() as conn:
        project = f"INSERT INTO projects (id, name, excluded_paths, created_at) VALUES (1, 'm', '[]', '{_AT}')"
        conn.execute(text(project))
        for pk, gid, event_id, kind, payload in _EVENTS:
            conn.execute(
                text(
                    "INSERT INTO feedback_events (id, project_id, event_id, type, generation_id, occurred_at,"
                    f" received_at, payload, excluded) VALUES (:pk, 1, :e, :t, :g, '{_AT}', '{_AT}', :payload, :x)"
                ),
                {"pk": pk, "e": event_id, "t": kind, "g": gid, "payload": json.dumps(payload), "x": False},
            )
        for gid, (shown, decision, edited, outcome, excluded) in _WINNERS.items():
            code = dict(zip(_NAMES, _CODE[gid], strict=True))
            code["messages"] = json.dumps(code["messages"]) if code["messages"] else None
            conn.execute(
                text(
                    "INSERT INTO generations (project_id, generation_id, outcome, prompt, messages, completion, prefix,"
                    " suffix, accepted_text, final_text, shown_event_id, decision, decision_event_id,"
                    " edited_event_id, excluded, secrets_redacted, event_count, created_at, updated_at) VALUES"
                    " (1, :g, :o, :prompt, :messages, :completion, :prefix, :suffix, :accepted_text, :final_text,"
                    f" :s, :d, :de, :ed, :x, '{{}}', 2, '{_AT}', '{_AT}')"
                ),
                code
                | {"g": gid, "o": outcome, "s": shown, "de": decision, "ed": edited, "x": excluded}
                | {"d": None if decision is None else ("rejected" if gid == "g3" else "accepted")},
            )

    migrate.upgrade(fresh_url)
    with engine.connect() as conn:
        rows = conn.execute(texts.select_with_code(Generation.__table__)).mappings().all()
    got = {r["generation_id"]: texts.code_of_mapping(dict(r)) for r in rows}
    assert got == {gid: dict(zip(_NAMES, code, strict=True)) for gid, code in _CODE.items()}
    assert {r["generation_id"]: r["shown_event_pk"] for r in rows} == {"g1": 1, "g2": 3, "g3": 5, "g4": 7}

    migrate.downgrade(fresh_url, "0004")
    with engine.connect() as conn:
        back = conn.execute(text(f"SELECT generation_id, {', '.join(_NAMES)} FROM generations")).all()
    engine.dispose()
    restored = {
        gid: tuple(
            json.loads(v) if name == "messages" and isinstance(v, str) else v
            for name, v in zip(_NAMES, rest, strict=True)
        )
        for gid, *rest in back
    }
    assert restored == _CODE
