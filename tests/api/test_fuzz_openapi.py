"""Every operation of the service's own OpenAPI schema, fuzzed by schemathesis with an ingest key and with an admin
key, answers without a server error: bad input gets a 4xx that names the parameter, whatever reaches the edge.
Fuzzed on Postgres, whose types are the strict ones (bigint, text without NUL)."""

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from core.settings import Settings
from tests.conftest import TEST_LIMITS, Server, Tenant, make_tenant, start_server

# Per operation and role. Derandomized, so a run is repeatable; at 50 the code before the edge checks (api/edge.py)
# failed on 6 operations. FUZZ_EXAMPLES=200 digs deeper by hand.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))


@pytest.fixture(scope="module")
def pg_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings_ = Settings(database_url=pg_url, data_dir=tmp_path_factory.mktemp("fuzz"), **TEST_LIMITS)
    srv, thread, url = start_server(settings_)
    yield Server(url=url, db_url=pg_url, settings=settings_)
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def fuzz_tenant(pg_server: Server) -> Iterator[Tenant]:
    tenant = make_tenant(pg_server)
    yield tenant
    tenant.ingest.close()
    tenant.admin.close()


# The schema the server publishes at /openapi.json, made by the same app factory without starting it (the lazy
# fixture loader of schemathesis does not support pytest 9); requests go to the real server over HTTP.
schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="sqlite://")).openapi())
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _call(case: schemathesis.Case, url: str, key: str) -> None:
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error])


@schema.parametrize()
@FUZZ
def test_no_operation_answers_a_server_error_to_an_ingest_key(case, pg_server: Server, fuzz_tenant: Tenant) -> None:
    _call(case, pg_server.url, fuzz_tenant.ingest_key)


@schema.parametrize()
@FUZZ
def test_no_operation_answers_a_server_error_to_an_admin_key(case, pg_server: Server, fuzz_tenant: Tenant) -> None:
    _call(case, pg_server.url, fuzz_tenant.admin_key)
