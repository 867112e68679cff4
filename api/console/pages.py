"""The console's pages: Overview, Feedback, Data, Runs, Adapters, Canary. Each page reads the services the API
routes read (feedback.service, feedback.snapshots, trainers.runs, trainers.registry, trainers.canary) plus the
overview's rollup (queries.py), and renders a Jinja2 template; a run's page polls `runs/{id}/live` for its progress
and curves. Promote and roll back go through trainers.registry like the API, behind the session's CSRF token; a
refusal is shown on the page with the gate's reasons, at the status api/errors.py gives it."""

import difflib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.console import auth, queries
from api.deps import SessionDep, authenticated, settings_of
from api.edge import json_problem
from api.errors import status_of
from core.db import utcnow
from core.errors import EditloopError, InvalidInput, Unauthenticated
from core.projects import ApiKey, Role
from feedback import service as feedback
from feedback import snapshots
from trainers import registry, rights, runs
from trainers.canary import BASE, compare
from trainers.schemas import RunOut

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
PAGES = [
    ("overview", "Overview", "/ui"),
    ("feedback", "Feedback", "/ui/feedback"),
    ("data", "Data", "/ui/data"),
    ("runs", "Runs", "/ui/runs"),
    ("adapters", "Adapters", "/ui/adapters"),
    ("canary", "Canary", "/ui/canary"),
]


GATE_VERSIONS = 10


class SignIn(Exception):
    """No valid session: the page answers with a redirect to the sign-in form."""


def session_of(request: Request, session: SessionDep) -> auth.ConsoleSession:
    who = auth.read(session, request.cookies.get(auth.COOKIE))
    if who is None:
        raise SignIn
    return who


Who = Annotated[auth.ConsoleSession, Depends(session_of)]


def render(request: Request, who: auth.ConsoleSession | None, page: str, status: int = 200, **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, f"{page}.html", {"who": who, "page": page, "pages": PAGES, **context}, status_code=status
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    )
    return response


async def form(request: Request) -> dict[str, str]:
    """The console's form fields (urlencoded), refused where Postgres could not store them, like any JSON body."""
    body = (await request.body()).decode("utf-8", "replace")
    fields = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    problem = json_problem(fields, "form")
    if problem is not None:
        raise InvalidInput(problem)
    return fields


# --- signing in and out ----------------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request) -> Response:
    return render(request, None, "login")


@router.post("/login")
async def login(request: Request) -> Response:
    key = (await form(request)).get("key", "").strip()
    try:
        principal = await authenticated(request.app, f"Bearer {key}")
    except Unauthenticated:
        return render(request, None, "login", 401, error="That key is unknown or revoked.")
    if principal.role is not Role.admin:
        return render(request, None, "login", 403, error="The console needs an admin key; this is an ingest key.")
    with request.app.state.sessions() as session:
        stored = session.scalar(select(ApiKey).where(ApiKey.id == principal.key_id))
        assert stored is not None
        cookie = auth.issue(stored)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        auth.COOKIE,
        cookie,
        max_age=auth.LIFETIME_S,
        httponly=True,
        samesite="strict",
        secure=settings_of(request).console_secure_cookie,
        path="/ui",
    )
    return response


@router.post("/logout")
async def logout(request: Request, who: Who) -> Response:
    auth.check_csrf(request, who, (await form(request)).get("csrf_token"))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/ui")
    return response


# --- pages ------------------------------------------------------------------------------------------------------------


@router.get("")
def overview(request: Request, session: SessionDep, who: Who) -> Response:
    pid = who.principal.project_id
    series = queries.overview_series(session, pid)
    aliases = {alias: registry.get_version(session, pid, alias) for alias in registry.aliases(session, pid)}
    context: dict[str, Any] = {
        "series": series,
        "aliases": aliases,
        "active": queries.active_run(session, pid),
        "volume": queries.volume(session, pid),
    }
    session.commit()  # the rollup's refresh, and what it folded
    return render(request, who, "overview", **context)


def _when(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: {value!r} is not a date or time (ISO 8601)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # a date or naive time is UTC


@router.get("/feedback")
def feedback_list(
    request: Request,
    session: SessionDep,
    who: Who,
    outcome: str | None = None,
    model: str | None = None,
    user: str | None = None,
    since: str | None = None,
    before: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    filters = {"outcome": outcome, "model": model, "user": user, "since": since, "before": before}
    filters = {k: v for k, v in filters.items() if v}
    page = feedback.list_generations(
        session,
        who.principal.project_id,
        outcome=filters.get("outcome"),
        model=filters.get("model"),
        user=filters.get("user"),
        since=_when(since, "since"),
        before=_when(before, "before"),
        cursor=cursor or None,
        limit=limit,
        newest_first=True,
    )
    session.commit()
    more = f"/ui/feedback?{urlencode({**filters, 'cursor': page.next_cursor})}" if page.next_cursor else None
    return render(request, who, "feedback", items=page.items, filters=filters, next_url=more)


@router.get("/feedback/{generation_id}")
def generation(request: Request, session: SessionDep, who: Who, generation_id: str) -> Response:
    found = feedback.get_generation(session, who.principal.project_id, generation_id)
    session.commit()
    diff = None
    kept = found.final_text if found.final_text is not None else found.accepted_text
    if not found.excluded and found.completion is not None:
        if kept is None and found.outcome == "accepted":
            kept = found.completion
        if kept is not None:
            diff = difflib.HtmlDiff(wrapcolumn=70).make_table(
                found.completion.splitlines(), kept.splitlines(), "model wrote", "user kept", context=False
            )
    return render(request, who, "generation", g=found, diff=diff)


@router.get("/data")
def data(request: Request, session: SessionDep, who: Who) -> Response:
    pid = who.principal.project_id
    return render(
        request,
        who,
        "data",
        snapshots=snapshots.list_snapshots(session, pid)[:50],
        builds=queries.builds(session, pid),
        volume=queries.volume(session, pid),
    )


@router.get("/runs")
def run_list(request: Request, session: SessionDep, who: Who) -> Response:
    return render(request, who, "runs", runs=runs.list_runs(session, who.principal.project_id, 100))


@router.get("/runs/{run_id}")
def run_page(request: Request, session: SessionDep, who: Who, run_id: int) -> Response:
    run = runs.get_run(session, who.principal.project_id, run_id)
    names = queries.versions_by_id(session, who.principal.project_id)
    return render(request, who, "run", run=run, names=names, figures=queries.figures(run.metrics))


@router.get("/runs/{run_id}/live")
def run_json(session: SessionDep, who: Who, run_id: int) -> Response:
    run = RunOut.model_validate(runs.get_run(session, who.principal.project_id, run_id))
    return JSONResponse(run.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


TARGET_DAYS = 7  # the Adapters page's live metrics per target: this many days back, unless `days` says otherwise


def _adapters_context(session: Session, project_id: int, days: int = TARGET_DAYS) -> dict[str, Any]:
    since = utcnow() - timedelta(days=days)
    targets = queries.targets(session, project_id, since)
    versions = registry.list_versions(session, project_id)
    aliases = registry.aliases(session, project_id)
    names = {v.id: v.name for v in versions}
    by_version: dict[int, list[str]] = {}
    for alias, version_id in aliases.items():
        by_version.setdefault(version_id, []).append(alias)
    history = registry.history(session, project_id)
    production = next((v for v in versions if aliases.get("production") == v.id), None)
    # What the gate would answer now for each recent policy version against production (bootstraps: the latest few).
    recent = [v for v in versions if v.kind == "policy"][:GATE_VERSIONS]
    verdicts = {v.id: registry.gate_verdict(session, project_id, v, production) for v in recent}
    return {
        "targets": targets,
        "target_days": days,
        "production": production,
        "verdicts": verdicts,
        "gate_figures": {
            vid: queries.figures({k: x for k, x in g.items() if k != "reasons"}) for vid, g in verdicts.items()
        },
        "versions": versions,
        "deleted_data": rights.flags_of(session, project_id),
        "aliases": {alias: names.get(vid, "?") for alias, vid in aliases.items()},
        "by_version": by_version,
        "names": names,
        "history": history[:100],
        "figures": {v.id: queries.figures(v.metrics.get("eval") or v.metrics) for v in versions},
    }


@router.get("/adapters")
def adapters(
    request: Request, session: SessionDep, who: Who, days: Annotated[int, Query(ge=1, le=366)] = TARGET_DAYS
) -> Response:
    context = _adapters_context(session, who.principal.project_id, days)
    session.commit()  # what the live metrics folded
    return render(request, who, "adapters", **context)


@router.post("/adapters/{name}/promote")
async def promote(request: Request, session: SessionDep, who: Who, name: str) -> Response:
    fields = await form(request)
    auth.check_csrf(request, who, fields.get("csrf_token"))
    actor = f"key {who.principal.key_id} (console)"
    try:
        registry.promote(
            session,
            who.principal.project_id,
            name,
            alias=fields.get("alias", "production"),
            actor=actor,
            reason=fields.get("reason") or None,
            force=fields.get("force") == "on",
        )
        session.commit()
    except EditloopError as exc:
        session.rollback()
        context = _adapters_context(session, who.principal.project_id)
        return render(request, who, "adapters", status_of(exc), refusal=exc.detail, refused=name, **context)
    return RedirectResponse(f"/ui/adapters?moved={name}", status_code=303)


@router.post("/aliases/{alias}/rollback")
async def rollback(request: Request, session: SessionDep, who: Who, alias: str) -> Response:
    fields = await form(request)
    auth.check_csrf(request, who, fields.get("csrf_token"))
    try:
        registry.rollback(
            session,
            who.principal.project_id,
            alias=alias,
            actor=f"key {who.principal.key_id} (console)",
            reason=fields.get("reason") or None,
        )
        session.commit()
    except EditloopError as exc:
        session.rollback()
        context = _adapters_context(session, who.principal.project_id)
        return render(request, who, "adapters", status_of(exc), refusal=exc.detail, refused=alias, **context)
    return RedirectResponse("/ui/adapters", status_code=303)


@router.get("/canary")
def canary(request: Request, session: SessionDep, who: Who) -> Response:
    pid = who.principal.project_id
    current = registry.aliases(session, pid)
    comparison = None
    since = None
    if "canary" in current:
        from trainers.models import AdapterAlias

        moved = session.get(AdapterAlias, (pid, "canary"))
        since = moved.updated_at if moved is not None else None
        baseline = "production" if "production" in current else BASE
        comparison = compare(session, pid, "canary", baseline, since=since)
    targets = queries.targets(session, pid, since) if comparison is not None else []
    session.commit()
    names = queries.versions_by_id(session, pid)
    return render(
        request,
        who,
        "canary",
        comparison=comparison,
        since=since,
        targets=targets,
        aliases={a: names[v] for a, v in current.items()},
    )


def install(app: Any) -> None:
    """A page without a session sends the browser to the sign-in form; a domain error on a page is shown as a page."""

    async def sign_in(_request: Request, _exc: Exception) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    app.add_exception_handler(SignIn, sign_in)
