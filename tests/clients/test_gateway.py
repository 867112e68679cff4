"""generate() through the gateway, sync and async: the response id is the generation id that feedback joins."""

import asyncio

import pytest
from editloop_client import AsyncEditloopClient, EditloopClient

from tests.conftest import Server, Tenant
from tests.serving.conftest import serving_model  # noqa: F401  (the fixture: a random tiny model)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def test_generate_then_feedback_joins_the_generation(server: Server, tenant: Tenant, serving_model, tmp_path):  # noqa: F811
    r = tenant.admin.patch("/v1/project/settings", json={"model": {"base_model": str(serving_model)}})
    assert r.status_code == 200, r.text
    with EditloopClient(server.url, tenant.ingest_key, queue_path=tmp_path / "q.db", flush_interval_s=0.05) as client:
        done = client.generate("def add(a, b):\n", model="base", max_tokens=6, temperature=0)
        assert done.model == "base" and done.text
        client.track(done.id).accepted(document="file:///a.py", offset=15)  # the text the gateway generated
        client.text_changed("file:///a.py", 15, len(done.text), "    return a + b")  # the user rewrote it all
        chat = client.generate(messages=[{"role": "user", "content": "add"}], model="base", max_tokens=4)
        client.track(chat.id).rejected("off topic")

    async def run() -> str:
        async with AsyncEditloopClient(server.url, tenant.ingest_key, queue_path=tmp_path / "a.db") as client:
            done = await client.generate("x = ", model="base", max_tokens=4, temperature=0)
            client.track(done.id).rated(0.5)
            return done.id

    rated = asyncio.run(run())
    first = tenant.admin.get(f"/v1/generations/{done.id}").json()
    assert first["outcome"] == "edited" and first["final_text"] == ""  # replacing all of it ends it: kept nothing
    assert tenant.admin.get(f"/v1/generations/{chat.id}").json()["outcome"] == "rejected"
    assert tenant.admin.get(f"/v1/generations/{rated}").json()["rating_score"] == 0.5
