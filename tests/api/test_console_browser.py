"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright), against a real server on
loopback with real data: events posted through the API, rows and a snapshot built, a version trained by a real run
(watched live from its page), a second version registered. It signs in, visits every page, promotes from the Adapters
page and sees the alias move, sees the gate refuse with its reasons, and fails on any browser console error.
Screenshots of every page go to test-artifacts/console/."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from core.db import session_scope, utcnow
from core.projects import Role, create_key, create_project
from core.settings import Settings
from feedback.rows import build_rows
from feedback.snapshots import cut_snapshot
from trainers import runs

from ..conftest import start_server
from ..trainers.test_canary import lora_adapter, publish, served
from ..trainers.tiny import random_model, style_events

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def site(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server with one project: base-model traffic (accepted, rejected, edited, an excluded path), a build and a
    snapshot, and a training run queued on a tiny random model."""
    data = tmp_path_factory.mktemp("console")
    settings = Settings(database_url=pg_url, data_dir=data, auth_cache_ttl_s=0)
    server, thread, url = start_server(settings)
    model = random_model(data / "model")
    with session_scope(pg_url) as session:
        project = create_project(session, f"console-{uuid.uuid4().hex[:8]}", ["secrets/*"])
        project.settings = {"model": {"base_model": str(model)}, "dataset": {"eval_fraction": 0.2}}
        _, ingest_key = create_key(session, project, Role.ingest)
        _, admin_key = create_key(session, project, Role.admin)
        project_id = project.id
    events = style_events(40) + served("base", accepted=30, rejected=25, edited=[3] * 12, shown=5)
    events.append(
        {
            "event_id": "secret-gen",
            "type": "generation",
            "generation_id": "secret-gen",
            "occurred_at": utcnow().isoformat(),
            "prompt": "token = ",
            "completion": "'do-not-show-this'",
            "model": "base",
            "file_path": "secrets/keys.py",
        }
    )
    post(url, ingest_key, events)
    with session_scope(pg_url) as session:
        build = build_rows(session, project_id)
        cut_snapshot(session, project_id, build_id=build.id)
        run_id = runs.create_run(
            session,
            project_id,
            "sft",
            {"max_steps": 20, "batch_size": 4, "eval_examples": 6, "eval_max_new_tokens": 8},
            actor="test",
        ).id
    yield {
        "url": url,
        "db": pg_url,
        "settings": settings,
        "project_id": project_id,
        "ingest_key": ingest_key,
        "admin_key": admin_key,
        "run_id": run_id,
        "data": data,
    }
    server.should_exit = True
    thread.join(timeout=10)


def post(url: str, key: str, events: list[dict]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for start in range(0, len(events), 200):
            r = client.post("/v1/events", json={"events": events[start : start + 200]})
            assert r.status_code == 200 and not r.json()["errors"], r.text


def wait_for_a_step(site: dict, trainer: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until the run reports a training step; fails with the run's error if it ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(site["db"]) as session:
            run = runs.get_run(session, site["project_id"], site["run_id"])
            status, progress, error = run.status, dict(run.progress or {}), run.error
        if progress.get("step"):
            return
        if status not in ("queued", "running") or trainer.poll() is not None:
            pytest.fail(f"run {status} before a step (trainer exit {trainer.poll()}): {progress} {error}")
        time.sleep(0.5)
    pytest.fail(f"no step within {timeout_s} s: {status} {progress}")


def expected_status(problems: list[str], status: int) -> None:
    """Chromium logs a page answered with an error status as a console error: the refusals this test provokes."""
    assert problems and all(f"status of {status}" in p for p in problems), problems
    problems.clear()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def test_console_end_to_end(site: dict, browser) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The console's CSP allows no eval; the test's own probes (wait_for_function, evaluate) need it.
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    url = site["url"]

    def visit(path: str, shot: str | None = None) -> None:
        response = page.goto(url + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        if shot:
            page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)

    # Signing in: pages need a session; an ingest key is refused; an admin key signs in with a strict cookie.
    page.goto(url + "/ui/runs")
    assert page.url.endswith("/ui/login")
    page.fill("#key", site["ingest_key"])
    page.click("#sign-in")
    assert "ingest key" in page.inner_text("#login-error")
    page.screenshot(path=str(ARTIFACTS / "0-login-refused.png"))
    expected_status(problems, 403)
    page.fill("#key", site["admin_key"])
    page.click("#sign-in")
    page.wait_for_url(url + "/ui")
    assert "script-src 'self'" in httpx.get(url + "/ui/login").headers["content-security-policy"]
    cookie = next(c for c in page.context.cookies() if c["name"] == "editloop_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and site["admin_key"] not in cookie["value"]

    # Runs: the run trains while its page is open; progress and curves arrive without a reload.
    # As a worker would: in a process of its own (the server and the browser driver keep this one busy).
    code = f"from trainers import runs; runs.execute({site['db']!r}, {site['run_id']})"
    env = {**os.environ, "EDITLOOP_DATABASE_URL": site["db"], "EDITLOOP_DATA_DIR": str(site["data"])}
    trainer = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[2])
    try:
        visit(f"/ui/runs/{site['run_id']}")
        page.evaluate("window.__noReload = true")
        curve_points = "Math.max(0, ...Chart.getChart('chart-curves').data.datasets.map(d => d.data.length))"
        at_load = page.evaluate(curve_points)  # the trainer is still importing torch: no step yet
        stage_at_load = page.inner_text("#run-stage")
        wait_for_a_step(site, trainer)
        # The stage moves on the page (sft, its evaluation, done; how many of them a 2 s poll sees depends on speed).
        page.wait_for_function(f"document.getElementById('run-stage').textContent !== {stage_at_load!r}")
        page.wait_for_function(f"{curve_points} > {at_load}", timeout=30_000)
        assert page.evaluate("window.__noReload") is True
        page.screenshot(path=str(ARTIFACTS / "4-run-live.png"), full_page=True)
    finally:
        assert trainer.wait(timeout=600) == 0
    page.wait_for_function("document.querySelector('#run-status .badge').textContent === 'succeeded'", timeout=30_000)
    # The chart grew on the page opened before training began, to the whole curve the run recorded (it reports every
    # 2 s, so a fast machine records few points), without a reload.
    with session_scope(site["db"]) as session:
        recorded = runs.get_run(session, site["project_id"], site["run_id"]).metrics["curve"]["sft"]
    losses = [point for point in recorded if "loss" in point]  # the first report may come before any log
    assert page.evaluate(curve_points) == len(losses) > at_load and page.evaluate("window.__noReload") is True
    visit(f"/ui/runs/{site['run_id']}", "4-run")
    visit("/ui/runs", "4-runs")
    assert "succeeded" in page.inner_text("#runs")

    # A second version, registered beside the trained v1: it evaluates far better than v1 on edit replay.
    adapter = lora_adapter(site["data"] / "lora")
    with session_scope(site["db"]) as session:
        better = publish(session, site["settings"].artifact_root, site["project_id"], adapter, distance=0.05)
    assert better == "v2"

    # Adapters: promote v2 to production from the page, see the alias move.
    visit("/ui/adapters")
    assert page.inner_text("#alias-production") == "base"
    form = page.locator("#v2 form.promote")
    form.locator("input[name=reason]").fill("best edit replay")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/ui/adapters?moved=v2")
    assert page.inner_text("#alias-production") == "v2"
    assert "best edit replay" in page.inner_text("#history")

    # The gate refuses v1 (trained for 20 steps from random weights, evaluated before v2 was production) against v2:
    # it never compares across different prompts, and the page says why and how to re-evaluate.
    form = page.locator("#v1 form.promote")
    form.locator("input[name=reason]").fill("try the trained one")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#refusal")
    refusal = page.inner_text("#refusal")
    assert "refused" in refusal and "production is v2, but v1 was evaluated" in refusal
    assert "editloop adapters evaluate v1" in refusal
    assert page.inner_text("#alias-production") == "v2"
    page.screenshot(path=str(ARTIFACTS / "5-adapters-refusal.png"), full_page=True)
    expected_status(problems, 409)

    # Forced onto canary with a reason, then live traffic for both.
    form = page.locator("#v1 form.promote")
    form.locator("select[name=alias]").select_option("canary")
    form.locator("input[name=reason]").fill("see it on live traffic")
    form.locator("input[name=force]").check()
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/ui/adapters?moved=v1")
    assert page.inner_text("#alias-canary") == "v1"
    visit("/ui/adapters", "5-adapters")
    later = utcnow() + timedelta(seconds=5)
    post(url, site["ingest_key"], served("v2", accepted=40, rejected=10, edited=[2] * 8, start=later))
    post(url, site["ingest_key"], served("v1", accepted=12, rejected=38, edited=[6] * 8, start=later))

    visit("/ui", "1-overview")
    assert page.inner_text("#aliases").count("v") >= 2
    assert page.evaluate("Chart.getChart('chart-acceptance').data.datasets.length") >= 9  # 3 versions x (line + band)
    visit("/ui/feedback", "2-feedback")
    visit("/ui/feedback?outcome=edited&model=base")
    rows = page.locator("#generations tbody tr")
    assert rows.count() >= 12 and all("edited" in t for t in rows.all_inner_texts())
    page.locator("#generations tbody a").first.click()
    page.wait_for_selector("#diff")
    assert "model wrote" in page.inner_text("#diff") and "user kept" in page.inner_text("#diff")
    page.screenshot(path=str(ARTIFACTS / "2-generation.png"), full_page=True)
    visit("/ui/feedback/secret-gen")
    assert page.locator("#excluded").count() == 1 and "do-not-show-this" not in page.content()
    visit("/ui/data", "3-data")
    assert "sft:" in page.inner_text("#snapshots")
    visit("/ui/canary", "6-canary")
    assert page.inner_text("#verdict") in ("worse", "not enough data")
    assert "mixture sequential probability ratio test" in page.inner_text("#canary-tests")

    # Every page links to the next; signing out ends the session.
    visit("/ui")
    for key in ("feedback", "data", "runs", "adapters", "canary"):
        page.click("footer a.next")
        assert page.locator(f'nav a.active[data-nav="{key}"]').count() == 1
    page.click("#sign-out")
    page.wait_for_url("**/ui/login")
    assert page.goto(url + "/ui/adapters") is not None and page.url.endswith("/ui/login")
    assert not problems, problems
