"""The upstream path against a real OpenAI-compatible server: a second `editloop serve` process (its own SQLite data
dir, a tiny random model) on another loopback port, whose ingest key is the upstream key. Faults come from a proxy
in front of it (tests/serving/fault_proxy.py), never from a mock."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import MetaData, select

from core import migrate
from core.db import get_engine, session_scope
from core.projects import Role, create_key, create_project, get_project
from core.settings import Settings
from trainers import canary

from ..conftest import TEST_LIMITS, Server, Tenant, free_port, start_server
from .conftest import register_adapter
from .fault_proxy import FaultProxy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "UPSTREAM_TEST_KEY"  # not EDITLOOP_-prefixed: the autouse fixture clears those
PROMPT = "def add(a, b):\n    return"
PRICES = {"price_input_per_mtok": 3.0, "price_output_per_mtok": 15.0}


@dataclass
class Rented:
    url: str
    key: str
    proxy: FaultProxy


@pytest.fixture(scope="module")
def rented(serving_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rented]:
    """The rented model: `editloop serve` in a process of its own, serving `base` behind an ingest key."""
    data = tmp_path_factory.mktemp("rented")
    url = Settings(data_dir=data).sqlalchemy_url
    migrate.upgrade(url)
    with session_scope(url) as session:
        project = create_project(session, "rented")
        project.settings = {"model": {"base_model": str(serving_model)}}
        _, key = create_key(session, project, Role.ingest)
    get_engine(url).dispose()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")},
        "EDITLOOP_DATA_DIR": str(data),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-background"]
    process = subprocess.Popen(cmd, env=env, cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}).is_success:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"the rented server did not start: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.2)
    proxy = FaultProxy(port).start()
    yield Rented(f"http://127.0.0.1:{port}/v1", key, proxy)
    proxy.stop()
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def gateway(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """editloop in front of it, with short upstream timeouts so the faults are quick to reach."""
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("data"),
        upstream_read_timeout_s=8,  # a hang waits this long; a loaded CPU can take seconds to answer
        upstream_retries=2,
        upstream_retry_max_wait_s=2,
        **TEST_LIMITS,
    )
    srv, thread, url = start_server(settings)
    yield Server(url=url, db_url=db_url, settings=settings)
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def tenant(gateway: Server) -> Iterator[Tenant]:
    from ..conftest import make_tenant

    t = make_tenant(gateway)
    yield t
    t.ingest.close()
    t.admin.close()


def configure(tenant: Tenant, url: str, model_dir: Path, **upstream: object) -> None:
    body = {
        "model": {"base_model": str(model_dir), "price_per_mtok": 0.5},
        "upstream": {"url": url, "model": "base", "api_key_env": KEY_ENV, **PRICES, **upstream},
    }
    r = tenant.admin.patch("/v1/project/settings", json=body)
    assert r.status_code == 200, r.text


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch, rented: Rented) -> None:
    monkeypatch.setenv(KEY_ENV, rented.key)


def test_openai_client_gets_the_upstreams_answer_recorded_with_cost(
    gateway: Server, tenant: Tenant, rented: Rented, serving_model: Path
) -> None:
    configure(tenant, rented.url, serving_model)
    api = client(gateway, tenant.ingest_key)
    direct = openai.OpenAI(base_url=rented.url, api_key=rented.key, max_retries=0, timeout=60)
    assert "upstream" in {m.id for m in api.models.list().data}

    want = direct.completions.create(model="base", prompt=PROMPT, max_tokens=10, temperature=0)
    got = api.completions.create(model="upstream", prompt=PROMPT, max_tokens=10, temperature=0, user="u1")
    assert got.model == "upstream" and got.choices[0].text == want.choices[0].text
    assert got.usage is not None and want.usage is not None and got.usage.prompt_tokens == want.usage.prompt_tokens
    streamed = list(api.completions.create(model="upstream", prompt=PROMPT, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": "write add"}]
    chat_want = direct.chat.completions.create(model="base", messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    chat = api.chat.completions.create(model="upstream", messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == chat_want.choices[0].message.content
    chat_stream = list(
        api.chat.completions.create(
            model="upstream",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices)
    assert text == chat_want.choices[0].message.content
    assert chat_stream[-1].usage is not None and chat_stream[-1].usage.completion_tokens == 8

    record = tenant.admin.get(f"/v1/generations/{got.id}").json()
    meta = record["metadata"]["gateway"]
    assert record["model"] == "upstream" and record["completion"] == want.choices[0].text and record["latency_ms"] > 0
    assert meta["provider_model"] == "base" and meta["backend"] == "upstream"
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (want.usage.prompt_tokens, 10)
    assert meta["cost"] == pytest.approx((want.usage.prompt_tokens * 3.0 + 10 * 15.0) / 1e6)
    streamed_meta = tenant.admin.get(f"/v1/generations/{streamed[0].id}").json()["metadata"]["gateway"]
    assert streamed_meta["completion_tokens"] == 10

    events = [
        {"event_id": "a", "type": "accepted", "generation_id": got.id, "occurred_at": "2026-11-20T10:00:00Z"},
        {"event_id": "b", "type": "rejected", "generation_id": chat.id, "occurred_at": "2026-11-20T10:00:00Z"},
    ]
    assert tenant.ingest.post("/v1/events", json={"events": events}).json()["stored"] == 2
    assert tenant.admin.get(f"/v1/generations/{got.id}").json()["outcome"] == "accepted"
    metrics = tenant.admin.get("/v1/adapters/upstream/metrics").json()
    assert (metrics["model"], metrics["served"], metrics["accepted"]) == ("upstream", 4, 1)
    assert metrics["latency_ms"]["n"] == 4 and metrics["latency_ms"]["p95"] >= metrics["latency_ms"]["p50"] > 0
    assert metrics["cost"]["priced"] == 4 and metrics["cost"]["per_accepted"] == pytest.approx(metrics["cost"]["total"])


def test_faults_are_retried_before_the_first_byte_and_named_after(
    gateway: Server, tenant: Tenant, rented: Rented, serving_model: Path
) -> None:
    configure(tenant, rented.proxy.url, serving_model)
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant.ingest_key}"}, timeout=60)
    body = {"model": "upstream", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    proxy = rented.proxy

    proxy.seen.clear()
    proxy.faults.extend(["429"])
    started = time.monotonic()
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == "upstream", r.text
    assert proxy.seen == ["429", "pass"] and time.monotonic() - started >= 1.0  # waited its Retry-After

    proxy.seen.clear()
    proxy.faults.extend(["503"] * 3)
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable", r.text
    assert "HTTP 503" in r.json()["detail"] and "3 attempts" in r.json()["detail"] and proxy.seen == ["503"] * 3

    proxy.seen.clear()
    proxy.faults.extend(["hang"])
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 504 and r.json()["error"] == "upstream_timeout", r.text
    assert proxy.seen == ["hang"]  # a hang is not waited for twice

    proxy.seen.clear()
    proxy.faults.extend(["drop"])
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert '"error"' in lines[-1] and "upstream_unavailable" in lines[-1] and len(lines) >= 2
    assert proxy.seen == ["drop"]  # never retried once a byte went out

    proxy.seen.clear()
    proxy.faults.extend(["503"] * 3)
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 502  # before the first byte: a status, not a broken stream
        response.read()

    configure(tenant, rented.proxy.url, serving_model, fallback="base")
    proxy.seen.clear()
    proxy.faults.extend(["503"] * 3)
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == "base", r.text
    meta = tenant.admin.get(f"/v1/generations/{r.json()['id']}").json()["metadata"]["gateway"]
    assert meta["fallback_from"].startswith("upstream: upstream 127.0.0.1") and meta["cost"] is not None
    http.close()


def test_canary_of_our_adapter_against_production_upstream(
    gateway: Server, tenant: Tenant, rented: Rented, serving_model: Path
) -> None:
    configure(tenant, rented.url, serving_model)
    r = tenant.admin.patch(
        "/v1/project/settings",
        json={"model": {"canary_share": 0.5, "canary_policy": "promote", "canary_min_samples": 8}},
    )
    assert r.status_code == 200, r.text
    with session_scope(gateway.db_url) as session:
        project_id = get_project(session, tenant.name).id
    per_example = [  # an evaluation the offline gate passes (better than the base on every held-out example)
        {"key": f"k{i}", "distance": 0.3, "parses": 1.0, "base_distance": 0.6, "base_parses": 1.0} for i in range(20)
    ]
    evaluated = {"eval": {"per_example": per_example}}
    root = gateway.settings.artifact_root
    version = register_adapter(gateway.db_url, root, project_id, serving_model, seed=1, metrics=evaluated)
    r = tenant.admin.post("/v1/adapters/upstream/promote", json={"alias": "production"})
    assert r.status_code == 200, r.text
    r = tenant.admin.post(f"/v1/adapters/{version}/promote", json={"alias": "canary", "force": True, "reason": "t"})
    assert r.status_code == 200, r.text
    cards = {m["id"]: m["root"] for m in tenant.ingest.get("/v1/models").json()["data"]}
    assert cards["production"] == "upstream" and cards["canary"] == version

    api = client(gateway, tenant.ingest_key)
    served: dict[str, list[str]] = {"upstream": [], version: []}
    for i in range(40):
        c = api.completions.create(model="production", prompt=PROMPT, max_tokens=4, temperature=0, user=f"u{i}")
        served[c.model].append(c.id)
    assert min(len(ids) for ids in served.values()) >= 8, {k: len(v) for k, v in served.items()}
    # the users keep what our adapter wrote and throw the rented model's away, or rewrite it (the first two)
    events = [
        {"event_id": f"e-{g}", "type": "accepted" if model == version else "rejected", "generation_id": g}
        for model, ids in served.items()
        for g in ids
    ]
    events += [
        {"event_id": f"edit-{g}", "type": "edited", "generation_id": g, "final_text": "return a + b\n"}
        for g in served["upstream"][:2]
    ]
    for event in events:
        event["occurred_at"] = "2026-11-20T10:00:00Z"
    assert tenant.ingest.post("/v1/events", json={"events": events}).json()["stored"] == len(events)

    compared = tenant.admin.get("/v1/adapters/compare", params={"a": "canary", "b": "upstream"}).json()
    assert compared["verdict"] == "better" and compared["b"]["model"] == "upstream"
    console_shows_each_target(gateway, tenant, version)
    with session_scope(gateway.db_url) as session:
        decision = canary.apply_canary_policy(session, project_id)
    assert decision["action"] == "promoted" and decision["baseline"] == "upstream", decision
    assert tenant.admin.get("/v1/adapters/production").json()["name"] == version


def console_shows_each_target(gateway: Server, tenant: Tenant, version: str) -> None:
    """The console's Adapters and Canary pages show, per target, what `GET /v1/adapters/{ref}/metrics` reports."""
    from ..api.test_console import signed_in, target_rows

    def expected(ref: str) -> dict[str, str]:
        m = tenant.admin.get(f"/v1/adapters/{ref}/metrics").json()
        a, e, latency, cost = m["acceptance_rate"], m["edit_rate"], m["latency_ms"], m["cost"]

        def sig(x: float | None) -> str:
            return "-" if x is None else f"{x:.3g}"

        return {
            "acceptance": f"{a['rate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]",
            "edit_rate": f"{e['rate']:.3f} [{e['low']:.3f}, {e['high']:.3f}]",
            "edit_distance": "-" if m["edit_distance"]["mean"] is None else f"{m['edit_distance']['mean']:.3f}",
            "latency_p50": f"{latency['p50']:.0f}",
            "latency_p95": f"{latency['p95']:.0f}",
            "cost_per_1k": sig(cost["per_1k_generations"]),
            "cost_per_accepted": sig(cost["per_accepted"]),
        }

    want = {
        "upstream": {**expected("upstream"), "aliases": "production"},
        version: {**expected(version), "aliases": "canary"},
    }
    # the users threw every upstream generation away: its spend bought nothing they kept
    assert want["upstream"]["cost_per_accepted"] == "-" and want[version]["cost_per_accepted"] != "-"
    assert want["upstream"]["edit_distance"] != "-" and want[version]["edit_distance"] == "-"
    assert want["upstream"]["acceptance"].startswith("0.000") and want[version]["acceptance"].startswith("1.000")
    assert float(want[version]["cost_per_1k"]) < float(want["upstream"]["cost_per_1k"])
    console = signed_in(gateway, tenant.admin_key)
    adapters = console.get("/ui/adapters")
    assert adapters.status_code == 200
    assert target_rows(adapters.text) == want  # the base served nothing and no alias points at it: not listed
    canary_page = console.get("/ui/canary").text
    assert target_rows(canary_page) == want  # everything was served after the canary moved
    assert "latency p50 / p95" in canary_page and "cost per accepted generation" in canary_page
    old = console.get("/ui/adapters", params={"days": 1}).text
    assert target_rows(old) == want and console.get("/ui/adapters", params={"days": 0}).status_code == 422


def test_the_key_is_never_stored_logged_or_returned(
    gateway: Server, tenant: Tenant, rented: Rented, serving_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configure(tenant, rented.url, serving_model)
    api = client(gateway, tenant.ingest_key)
    seen = [api.completions.create(model="upstream", prompt=PROMPT, max_tokens=4, temperature=0).model_dump_json()]
    os.environ[KEY_ENV] = rented.key + "x"  # a wrong key: the upstream's 401 must not echo it back either
    r = httpx.post(
        f"{gateway.url}/v1/completions",
        json={"model": "upstream", "prompt": PROMPT},
        headers={"Authorization": f"Bearer {tenant.ingest_key}"},
    )
    assert r.status_code == 502 and "HTTP 401" in r.json()["detail"], r.text
    seen.append(r.text)
    os.environ[KEY_ENV] = rented.key
    for path in ("/v1/project/settings", "/v1/adapters", "/v1/generations", "/v1/adapters/upstream/metrics"):
        seen.append(tenant.admin.get(path).text)
    engine = get_engine(gateway.db_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        for table in tables.sorted_tables:
            seen += [repr(tuple(row)) for row in conn.execute(select(table))]
    seen += [record.getMessage() for record in caplog.records]
    assert seen and not [text for text in seen if rented.key in text]
