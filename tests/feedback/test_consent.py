"""The consent rule: an opted-out user's generations never become training rows from the moment of the opt-out,
even those that reached the database without ingest seeing the opt-out (a transaction racing it); earlier ones
still do, since opting out deletes nothing."""

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from core.db import session_scope
from core.projects import create_project
from core.settings import Settings
from feedback import consent
from feedback.models import TrainingRow
from feedback.rights_models import Consent
from feedback.rows import build_rows
from feedback.service import ingest
from tests.factories import T0
from tests.rights_data import user_events


def test_rows_honour_an_opt_out_from_its_moment(db_url: str) -> None:
    with session_scope(db_url) as session:
        project_id = create_project(session, f"c-{uuid.uuid4().hex[:8]}").id
    early = user_events("ivy", "i", 3)  # November 1st, from T0
    late = user_events("ivy", "i", 3, start=600)  # ten hours later
    with session_scope(db_url) as session:
        ingest(session, project_id, early + late + user_events("joe", "j", 3), Settings())
    with session_scope(db_url) as session:  # as if the opt-out committed between the two, unseen by ingest
        consent.set_consent(session, project_id, "user", "ivy", True, "test")
        session.execute(update(Consent).values(changed_at=T0 + timedelta(hours=5)))
    with session_scope(db_url) as session:
        build = build_rows(session, project_id)
        assert build.report["gates"]["excluded"] == 3
        rows = session.scalars(select(TrainingRow).where(TrainingRow.project_id == project_id)).all()
    late_ids = {e["generation_id"] for e in late}
    assert {r.user for r in rows} == {"ivy", "joe"}
    assert not [r for r in rows if set(r.generation_ids) & late_ids]


def test_withheld_names_the_opted_out_generations_only(db_url: str) -> None:
    with session_scope(db_url) as session:
        project_id = create_project(session, f"c-{uuid.uuid4().hex[:8]}").id
        consent.set_consent(session, project_id, "user", "kim", True, "test")
        consent.set_consent(session, project_id, "repository", "org/private", True, "test")
        consent.set_consent(session, project_id, "user", "lou", False, "test")
        subjects = [("g1", "kim", None), ("g2", "lou", None), ("g3", None, "org/private"), ("g4", "max", "org/x")]
        assert consent.withheld(session, project_id, subjects) == {"g1", "g3"}
        assert consent.withheld(session, project_id, []) == set()
