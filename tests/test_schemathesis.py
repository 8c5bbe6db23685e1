"""Property-based API tests generated from /openapi.json: no 5xx, responses match the schema."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from tests.server_fixtures import seed_index, settings_for  # noqa: E402

KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def app(tiny_ckpt, tmp_path_factory):
    from fastapi.testclient import TestClient

    from server.app import create_app

    ix = tmp_path_factory.mktemp("st") / "ix"
    seed_index(ix, tiny_ckpt, n=4)
    application = create_app(settings_for(tiny_ckpt, ix, api_key=KEY, max_tokens_limit=8, default_max_tokens=2,
                                          max_k=5, max_samples_per_request=4))
    with TestClient(application):  # runs the lifespan: the service is loaded
        yield application


def test_api_never_5xx_and_matches_schema(app):
    """Every operation, a dozen generated requests each (hypothesis drives schemathesis)."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {KEY}"})
    headers = {"Authorization": f"Bearer {KEY}"}
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/ready":
            continue  # may answer 503 by design while a canary fails
        tested += 1

        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call(headers=headers)
            label = case.operation.label
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")
                return
            if response.status_code < 300 or response.status_code in (401, 404, 409, 422, 429):
                try:
                    case.validate_response(response, checks=[response_schema_conformance])
                except Exception as e:  # collected, reported together
                    failures.append(f"{label}: {type(e).__name__}: {str(e)[:300]}")

        run()
    assert tested >= 14
    assert not failures, "\n".join(failures[:10])
