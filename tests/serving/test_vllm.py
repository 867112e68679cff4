"""The vLLM backend against vLLM's recorded LoRA contract (fixtures/vllm/, replayed by fake_vllm.FakeVLLM): each
version loaded once under its own name, never reloaded in place; a lost adapter reloaded; evictions unloaded; and
the gateway over HTTP with the openai client, recording what vLLM generated with the version that generated it."""

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn

from core.db import session_scope
from core.projects import Role, create_key, create_project
from core.settings import Settings
from serving.backend import Adapter, BackendUnavailable, Params, Target
from serving.gateway import Gateway
from serving.vllm import VLLMBackend

from ..conftest import TEST_LIMITS, free_port
from .conftest import lora_dir, register_adapter
from .fake_vllm import FakeVLLM, fixture

BASE = fixture("models")["response"]["json"]["data"][0]["id"]
PARAMS = Params(prompt="def add(a, b):", messages=None, max_tokens=4, temperature=0.0, top_p=1.0, stops=(), seed=None)


@pytest.fixture(scope="module")
def adapters(serving_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Adapter]:
    from core import artifacts

    out = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp("vllm-adapters")
        staging = artifacts.staging_dir(root, "a")
        lora_dir(serving_model, staging, seed)
        path = root / f"v{seed}"
        artifacts.publish(staging, path, {"name": f"v{seed}"})
        out.append(Adapter(f"p1-v{seed}-{uuid.uuid4().hex[:12]}", f"v{seed}", path, artifacts.manifest_sha256(path)))
    return out


def backend(fake: FakeVLLM, **settings: object) -> VLLMBackend:
    return VLLMBackend(Settings(vllm_url="http://vllm:8000", **settings), transport=fake.transport())  # type: ignore[arg-type]


def target(adapter: Adapter | None) -> Target:
    return Target(BASE, None, adapter)


def test_each_version_is_loaded_once_under_its_own_name(adapters: list[Adapter]) -> None:
    fake = FakeVLLM(api_key="secret")
    vllm = backend(fake, vllm_api_key="secret")
    pieces: list[str] = []
    result = vllm.generate(target(adapters[0]), PARAMS, pieces.append, threading.Event())
    assert result.text == "\n    return a +" and pieces == ["\n", "    return", " a", " +"]
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 6, 4)
    vllm.generate(target(adapters[0]), PARAMS, None, threading.Event())
    loads = [body for path, body in fake.requests if path == "/v1/load_lora_adapter"]
    assert loads == [{"lora_name": adapters[0].key, "lora_path": str(adapters[0].path)}]
    completions = [body for path, body in fake.requests if path == "/v1/completions"]
    assert [b["model"] for b in completions] == [adapters[0].key] * 2

    base = vllm.generate(target(None), PARAMS, None, threading.Event())
    assert base.text and fake.requests[-1][1]["model"] == BASE

    chat = Params(None, [{"role": "user", "content": "write add"}], 8, 0.0, 1.0, ("\n\n",), 3)
    result = vllm.generate(target(adapters[0]), chat, None, threading.Event())
    assert (result.text, result.finish_reason, result.completion_tokens) == ("def add(a, b):", "stop", 3)
    assert fake.requests[-1][1]["stop"] == ["\n\n"] and fake.requests[-1][1]["seed"] == 3

    with pytest.raises(BackendUnavailable, match="401"):
        backend(fake, vllm_api_key="wrong").generate(target(None), PARAMS, None, threading.Event())


def test_loaded_elsewhere_lost_in_a_restart_and_evicted(adapters: list[Adapter], tmp_path: Path) -> None:
    fake = FakeVLLM()
    first, second = backend(fake), backend(fake)  # two gateway processes, one vLLM server
    first.generate(target(adapters[0]), PARAMS, None, threading.Event())
    assert second.generate(target(adapters[0]), PARAMS, None, threading.Event()).text  # its 400 means: loaded
    assert [p for p, _ in fake.requests].count("/v1/load_lora_adapter") == 2 and len(fake.loras) == 1

    fake.restart()
    assert first.generate(target(adapters[0]), PARAMS, None, threading.Event()).text  # 404, loaded again, retried
    assert list(fake.loras) == [adapters[0].key]

    one = backend(fake, serving_max_adapters=1)
    one.generate(target(adapters[0]), PARAMS, None, threading.Event())
    one.generate(target(adapters[1]), PARAMS, None, threading.Event())
    assert list(fake.loras) == [adapters[1].key] and fake.requests[-2][0] == "/v1/unload_lora_adapter"

    missing = Adapter("p1-v9-000000000000", "v9", tmp_path / "v9", "0" * 64)
    with pytest.raises(BackendUnavailable, match="v9: its artifacts fail verification"):
        backend(fake).generate(target(missing), PARAMS, None, threading.Event())
    elsewhere = backend(FakeVLLM(), artifacts_dir=adapters[1].path.parent, vllm_adapter_dir=tmp_path / "not-mounted")
    with pytest.raises(BackendUnavailable, match="refused to load v2: 404 .*No adapter found"):
        elsewhere.generate(target(adapters[1]), PARAMS, None, threading.Event())


def test_adapter_paths_as_the_vllm_server_sees_them(adapters: list[Adapter]) -> None:
    root = adapters[0].path.parent
    vllm = backend(FakeVLLM(), artifacts_dir=root, vllm_adapter_dir=Path("/mnt/artifacts"))
    assert vllm.lora_path(adapters[0]) == f"/mnt/artifacts/{adapters[0].path.name}"


@pytest.fixture
def vllm_server(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, Settings, FakeVLLM]]:
    from api.app import create_app

    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        serving_backend="vllm",
        vllm_url="http://vllm:8000",
        **TEST_LIMITS,  # type: ignore[arg-type]
    )
    fake = FakeVLLM()
    app = create_app(settings)
    app.state.gateway = Gateway(settings, VLLMBackend(settings, transport=fake.transport()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", settings, fake
    server.should_exit = True
    thread.join(timeout=10)


def test_gateway_on_vllm_records_what_it_served(
    vllm_server: tuple[str, Settings, FakeVLLM], sqlite_url: str, serving_model: Path
) -> None:
    url, settings, fake = vllm_server
    with session_scope(sqlite_url) as session:
        project = create_project(session, f"v-{uuid.uuid4().hex[:10]}")
        project.settings = {"model": {"base_model": str(serving_model)}}
        project_id = project.id
        _, ingest_key = create_key(session, project, Role.ingest)
        _, admin_key = create_key(session, project, Role.admin)
    name = register_adapter(sqlite_url, settings.artifact_root, project_id, serving_model, seed=1)
    import httpx

    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"})
    admin.post(f"/v1/adapters/{name}/promote", json={"alias": "production", "force": True, "reason": "t"})
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=ingest_key, max_retries=0)

    done = api.completions.create(model="production", prompt="def add(a, b):", max_tokens=4, temperature=0)
    assert done.model == name and done.choices[0].text == "\n    return a +" and done.usage.completion_tokens == 4  # type: ignore[union-attr]
    streamed = list(api.chat.completions.create(model="v1", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "def add(a, b):"
    loaded = [body["lora_name"] for path, body in fake.requests if path == "/v1/load_lora_adapter"]
    assert len(loaded) == 1 and loaded[0].startswith(f"p{project_id}-{name}-")

    got = admin.get(f"/v1/generations/{done.id}").json()
    assert got["model"] == name and got["completion"] == "\n    return a +"
    assert got["metadata"]["gateway"]["backend"] == "vllm"
    assert admin.get(f"/v1/generations/{streamed[0].id}").json()["model"] == name
