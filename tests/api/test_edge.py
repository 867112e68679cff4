"""Input that Postgres cannot hold (an integer past bigint, a NUL in text) gets a 422 naming the parameter, on every
route, before a query runs; a body past the limit is refused as it streams in."""

import pytest

from api.edge import json_problem

HUGE = str(2**63)


@pytest.mark.parametrize(
    ("path", "params", "where"),
    [
        (f"/v1/runs/{HUGE}", None, "path.run_id"),
        (f"/v1/datasets/{HUGE}", None, "path.snapshot_id"),
        ("/v1/runs", {"limit": HUGE}, "query.limit"),
        ("/v1/adapters", {"kind": "policy\x00"}, "query.kind"),
        ("/v1/adapters/history", {"alias": "\x00"}, "query.alias"),
        ("/v1/generations/g%00", None, "path.generation_id"),
    ],
)
def test_a_parameter_postgres_cannot_hold_is_a_422_naming_it(tenant, path, params, where):
    r = tenant.admin.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"
    assert r.json()["detail"].startswith(f"{where}: "), r.json()


def test_the_smallest_bigint_is_still_a_valid_id(tenant):
    assert tenant.admin.get(f"/v1/runs/{-(2**63)}").status_code == 404


def test_a_body_value_postgres_cannot_hold_is_a_422_naming_it(tenant):
    r = tenant.admin.post("/v1/runs", json={"kind": "dpo", "snapshot_id": 2**64})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.snapshot_id: "), r.text
    r = tenant.admin.post("/v1/adapters/production/promote", json={"reason": "because\x00"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.reason: "), r.text


def test_a_completion_request_with_a_nul_is_a_422(tenant):
    r = tenant.ingest.post("/v1/completions", json={"model": "base", "prompt": "def f():\x00"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.prompt: "), r.text


def test_an_oversized_body_is_refused_before_it_is_read(tenant, server):
    limit = server.settings.max_request_bytes
    r = tenant.admin.patch("/v1/project/settings", content=b"{" + b" " * limit + b"}")
    assert r.status_code == 413, r.text

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    r = tenant.admin.patch("/v1/project/settings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_json_problem_names_an_unstorable_place():
    assert json_problem({"a": [1, {"b": "ok"}], "c": 2.5, "d": None, "e": True}) is None
    assert json_problem({"a": [1, {"b": "x\x00"}]}) == "body.a[1].b: contains a NUL character, which text cannot hold"
    assert json_problem({"n": -(2**63) - 1}).startswith("body.n: ")
    assert json_problem({"k\x00": 1}).startswith("body: a key")
