"""The gateway over real HTTP with the official `openai` client: generations recorded with the version that produced
them, feedback joined to them, canary share, and a promotion served without a restart or a failed request."""

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from core.db import session_scope
from core.projects import get_project
from serving.gateway import canary_draw

from ..conftest import Server, Tenant
from .conftest import register_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

PROMPT = "def add(a, b):\n    return"


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def setup_project(server: Server, tenant: Tenant, model_dir: Path, versions: int = 2, **model: object) -> int:
    r = tenant.admin.patch("/v1/project/settings", json={"model": {"base_model": str(model_dir), **model}})
    assert r.status_code == 200, r.text
    with session_scope(server.db_url) as session:
        project_id = get_project(session, tenant.name).id
    root = server.settings.artifact_root
    for seed in range(versions):
        register_adapter(server.db_url, root, project_id, model_dir, seed=seed + 1)
    return project_id


def promote(tenant: Tenant, version: str, alias: str = "production") -> None:
    r = tenant.admin.post(f"/v1/adapters/{version}/promote", json={"alias": alias, "force": True, "reason": "test"})
    assert r.status_code == 200, r.text


def test_openai_client_generations_are_recorded_and_joined(server: Server, tenant: Tenant, serving_model: Path) -> None:
    setup_project(server, tenant, serving_model)
    promote(tenant, "v1")
    api = client(server, tenant.ingest_key)

    assert {m.id for m in api.models.list().data} == {"production", "v1", "v2", "base"}

    first = api.completions.create(model="production", prompt=PROMPT, max_tokens=12, temperature=0, user="u1")
    assert first.model == "v1" and first.id.startswith("cmpl-") and first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 12
    text = first.choices[0].text
    assert text
    again = api.completions.create(model="v1", prompt=PROMPT, max_tokens=12, temperature=0)
    assert again.choices[0].text == text and again.id != first.id  # greedy: same version, same text
    base = api.completions.create(model="base", prompt=PROMPT, max_tokens=12, temperature=0)
    other = api.completions.create(model="v2", prompt=PROMPT, max_tokens=12, temperature=0)
    assert base.model == "base" and other.model == "v2"
    assert len({text, base.choices[0].text, other.choices[0].text}) == 3  # each adapter changes what is said

    streamed = api.completions.create(model="v1", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == text
    assert len({c.id for c in chunks}) == 1 and chunks[-1].choices[0].finish_reason == "length"
    stream_id = chunks[0].id

    stop = text[len(text) // 2 :][:3]  # a stop sequence taken from inside the greedy text
    cut = api.completions.create(model="v1", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"

    chat = api.chat.completions.create(
        model="production", messages=[{"role": "user", "content": "write add"}], max_tokens=8, temperature=0
    )
    assert chat.model == "v1" and chat.id.startswith("chatcmpl-") and chat.choices[0].message.content
    chat_stream = list(
        api.chat.completions.create(
            model="production",
            messages=[{"role": "user", "content": "write add"}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices) == chat.choices[0].message.content
    )
    assert chat_stream[-1].usage is not None and chat_stream[-1].usage.completion_tokens == 8

    # The editor posts feedback for the ids it was given; each joins the generation that the version produced.
    events = [
        {"event_id": "e1", "type": "accepted", "generation_id": first.id, "occurred_at": "2026-11-20T10:00:00Z"},
        {"event_id": "e2", "type": "rejected", "generation_id": other.id, "occurred_at": "2026-11-20T10:00:00Z"},
        {
            "event_id": "e3",
            "type": "edited",
            "generation_id": stream_id,
            "occurred_at": "2026-11-20T10:00:00Z",
            "final_text": "    return a + b\n",
        },
        {"event_id": "e4", "type": "accepted", "generation_id": chat.id, "occurred_at": "2026-11-20T10:00:00Z"},
    ]
    r = tenant.ingest.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json()["stored"] == 4, r.text
    expected = {first.id: ("v1", "accepted"), other.id: ("v2", "rejected"), stream_id: ("v1", "edited")}
    expected[chat.id] = ("v1", "accepted")
    for generation_id, (model, outcome) in expected.items():
        got = tenant.admin.get(f"/v1/generations/{generation_id}").json()
        assert (got["model"], got["outcome"]) == (model, outcome), got
    got = tenant.admin.get(f"/v1/generations/{first.id}").json()
    assert got["prompt"] == PROMPT and got["completion"] == text and got["user"] == "u1"
    assert (
        got["metadata"]["gateway"]["requested"] == "production" and got["metadata"]["gateway"]["alias"] == "production"
    )
    assert got["final_text"] == text  # accepted as generated
    assert tenant.admin.get(f"/v1/generations/{chat.id}").json()["messages"] == [
        {"role": "user", "content": "write add"}
    ]


def test_the_demo_call_and_clear_errors(server: Server, tenant: Tenant, serving_model: Path) -> None:
    api = client(server, tenant.ingest_key)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="production", prompt=PROMPT, max_tokens=4)  # nothing promoted, no versions
    setup_project(server, tenant, serving_model, versions=1)
    with session_scope(server.db_url) as session:
        project_id = get_project(session, tenant.name).id
    register_adapter(server.db_url, server.settings.artifact_root, project_id, serving_model, seed=9, kind="reward")
    promote(tenant, "v1")

    body: dict[str, object] = {
        "model": "production",
        "prompt": PROMPT,
        "max_tokens": 6,
        "temperature": 0,
        "user": "user-3",
    }
    metadata = {"language": "python", "file_path": "src/user-3/module.py", "ticket": "T-1"}
    r = tenant.ingest.post("/v1/completions", json={**body, "stop": ["\n\n"], "metadata": metadata})
    assert r.status_code == 200, r.text
    assert r.json()["id"] and isinstance(r.json()["choices"][0]["text"], str) and r.json()["model"] == "v1"
    got = tenant.admin.get(f"/v1/generations/{r.json()['id']}").json()
    assert (got["language"], got["file_path"], got["user"]) == ("python", "src/user-3/module.py", "user-3")
    assert got["metadata"]["ticket"] == "T-1" and got["metadata"]["gateway"]["requested"] == "production"

    cases: list[tuple[dict[str, object], int, str]] = [
        ({"model": "v9"}, 404, "model"),
        ({"model": "v2"}, 422, "model"),  # a reward model
        ({"n": 2}, 422, "n"),
        ({"max_tokens": 10**6}, 422, "max_tokens"),
        ({"stop": [""]}, 422, "stop"),
        ({"prompt": None}, 422, "prompt"),
    ]
    for change, status, field in cases:
        r = tenant.ingest.post("/v1/completions", json={**body, **change})
        assert r.status_code == status and r.json()["detail"].startswith(field), (change, r.text)
    assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 401
    with pytest.raises(openai.UnprocessableEntityError):
        api.completions.create(model="production", prompt=PROMPT, max_tokens=4, n=2)

    too_long = "x = 1\n" * 400  # more tokens than the model's context: found by the backend, after a stream began
    r = tenant.ingest.post("/v1/completions", json={**body, "prompt": too_long})
    assert r.status_code == 422 and "exceed the model's context" in r.json()["detail"]
    with pytest.raises(openai.APIError, match="exceed the model's context"):
        list(api.completions.create(model="production", prompt=too_long, max_tokens=4, stream=True))


def test_canary_takes_its_share_of_production(server: Server, tenant: Tenant, serving_model: Path) -> None:
    setup_project(server, tenant, serving_model, canary_share=1.0)
    promote(tenant, "v1")
    api = client(server, tenant.ingest_key)
    assert api.completions.create(model="production", prompt=PROMPT, max_tokens=2).model == "v1"
    promote(tenant, "v2", alias="canary")
    served = api.completions.create(model="production", prompt=PROMPT, max_tokens=2, user="u7")
    assert served.model == "v2"
    meta = tenant.admin.get(f"/v1/generations/{served.id}").json()["metadata"]["gateway"]
    assert (meta["requested"], meta["alias"], meta["version"]) == ("production", "canary", "v2")
    assert api.completions.create(model="canary", prompt=PROMPT, max_tokens=2).model == "v2"

    tenant.admin.patch("/v1/project/settings", json={"model": {"canary_share": 0.0}})
    assert api.completions.create(model="production", prompt=PROMPT, max_tokens=2, user="u7").model == "v1"
    assert {m.id: m.root for m in api.models.list().data if m.id in ("production", "canary")} == {  # type: ignore[attr-defined]
        "production": "v1",
        "canary": "v2",
    }


def test_canary_draw_is_consistent_per_user_and_near_its_share() -> None:
    users = [f"user-{i}" for i in range(4000)]
    drawn = [canary_draw(u, "v7", 0.25) for u in users]
    assert drawn == [canary_draw(u, "v7", 0.25) for u in users]  # the same user, the same side
    assert 0.22 < sum(drawn) / len(drawn) < 0.28
    assert drawn != [canary_draw(u, "v8", 0.25) for u in users]  # a new canary draws afresh
    assert not any(canary_draw(u, "v7", 0.0) for u in users[:50]) and all(canary_draw(u, "v7", 1.0) for u in users[:50])
    import random

    rng = random.Random(0)
    anonymous = Counter(canary_draw(None, "v7", 0.25, rng) for _ in range(4000))
    assert 0.22 < anonymous[True] / 4000 < 0.28


def test_promotion_is_served_without_restart_or_failed_request(
    server: Server, tenant: Tenant, serving_model: Path
) -> None:
    setup_project(server, tenant, serving_model)
    promote(tenant, "v1")
    api = client(server, tenant.ingest_key)
    api.completions.create(model="production", prompt=PROMPT, max_tokens=2)  # the base model is loaded
    log: list[tuple[float, float, str]] = []  # (sent, answered, model)
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                got = api.completions.create(model="production", prompt=PROMPT, max_tokens=4, temperature=0)
                log.append((sent, time.monotonic(), got.model))
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
                failures.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    while len(log) < 4 and not failures:
        time.sleep(0.01)
    promote(tenant, "v2")
    promoted = time.monotonic()
    deadline = promoted + 30
    while not any(sent > promoted for sent, _, _ in log) and time.monotonic() < deadline and not failures:
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    assert failures == []
    assert {model for _, _, model in log} == {"v1", "v2"}
    after = [model for sent, _, model in log if sent > promoted]
    assert after and set(after) == {"v2"}  # every request sent after the promotion committed gets the new version
    with session_scope(server.db_url) as session:
        project_id = get_project(session, tenant.name).id
    r = tenant.admin.get("/v1/generations", params={"model": "v2", "limit": 1000})
    assert len(r.json()["items"]) == sum(model == "v2" for _, _, model in log) and project_id


def test_the_collector_with_the_gateway_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from api.app import create_app; from core.settings import Settings;"
        " import serving.vllm; create_app(Settings(database_url='sqlite://'));"
        " heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]", out.stderr
