"""Secrets never reach the database: not the join, not the raw event log. Excluded paths keep no code."""

from sqlalchemy import select

from core.db import session_scope
from feedback.fold import settle
from feedback.models import FeedbackEvent, Generation
from tests.factories import feedback, generation, new_id

AWS = "AKIAIOSFODNN7EXAMPLE"
PG_PASSWORD = "s3cr3t-Pa55w0rd"


def _stored_text(db_url: str, gid: str) -> str:
    with session_scope(db_url) as session:
        for project_id in set(
            session.scalars(select(FeedbackEvent.project_id).where(FeedbackEvent.generation_id == gid))
        ):
            settle(session, project_id, [gid])  # what deferred ingest has not folded yet
        events = session.scalars(select(FeedbackEvent).where(FeedbackEvent.generation_id == gid)).all()
        rows = session.scalars(select(Generation).where(Generation.generation_id == gid)).all()
        parts = [repr(e.payload) for e in events]
        parts += [repr({c.name: getattr(r, c.key) for c in Generation.__table__.columns}) for r in rows]
    return "\n".join(parts)


def test_secrets_are_replaced_before_storage_and_counted(tenant, server):
    gid = new_id()
    completion = f'client = boto3.client("s3", aws_access_key_id="{AWS}")\n'
    final = f'DSN = "postgresql://app:{PG_PASSWORD}@db.internal:5432/prod"\n'
    r = tenant.ingest.post(
        "/v1/events",
        json={
            "events": [
                generation(gid, completion=completion, metadata={"note": f"key {AWS}"}),
                feedback(gid, "edited", 3, final_text=final),
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["secrets_redacted"] == {"aws_access_key": 2, "connection_string_password": 1}

    g = tenant.admin.get(f"/v1/generations/{gid}").json()
    assert g["completion"] == 'client = boto3.client("s3", aws_access_key_id="<secret:aws_access_key>")\n'
    assert g["final_text"] == 'DSN = "postgresql://app:<secret:connection_string_password>@db.internal:5432/prod"\n'
    assert g["secrets_redacted"] == {"aws_access_key": 2, "connection_string_password": 1}
    stored = _stored_text(server.db_url, gid)
    assert AWS not in stored and PG_PASSWORD not in stored
    assert "<secret:aws_access_key>" in stored


def test_excluded_paths_keep_outcome_but_no_code(tenant_factory, server):
    tenant = tenant_factory(excluded_paths=[".env*", "*.pem", "secrets/**"])
    early, plain, nested = new_id(), new_id(), new_id()
    # The edit arrives before the generation that reveals the path: it must not stay in the log either.
    tenant.ingest.post("/v1/events", json={"events": [feedback(early, "edited", 5, final_text="API_URL=https://x")]})
    r = tenant.ingest.post(
        "/v1/events",
        json={
            "events": [
                generation(early, file_path="config/.env.local", completion="API_URL=http://x"),
                generation(plain, file_path="src/app.py"),
                generation(nested, file_path="secrets/prod/key.txt"),
                feedback(nested, "accepted", 2, accepted_text="abc"),
            ]
        },
    )
    assert r.status_code == 200, r.text
    g = tenant.admin.get(f"/v1/generations/{early}").json()
    assert (g["outcome"], g["excluded"], g["completion"], g["final_text"], g["prompt"]) == (
        "edited",
        True,
        None,
        None,
        None,
    )
    assert g["file_path"] == "config/.env.local"
    assert "API_URL" not in _stored_text(server.db_url, early)
    n = tenant.admin.get(f"/v1/generations/{nested}").json()
    assert (n["outcome"], n["excluded"], n["final_text"]) == ("accepted", True, None)
    assert "abc" not in _stored_text(server.db_url, nested)
    p = tenant.admin.get(f"/v1/generations/{plain}").json()
    assert (p["excluded"], p["completion"]) == (False, "    return a + b\n")
