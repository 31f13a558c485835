"""Schemathesis against ``twentyq serve``'s OpenAPI document (issue 27): cases generated from the schema,
sent to the app in-process, and every answer checked against the schema and for server errors.

Bounded: a few examples per operation and no shrinking past a deadline, so it stays a few seconds on
2 cores; a longer run against a real server on 127.0.0.1 is ``python -m bench.schema_fuzz``. A schema regression (an
answer the document does not declare, a 500, a schema-valid request refused) fails here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
schemathesis = pytest.importorskip("schemathesis", reason="the schema fuzz test needs schemathesis: "
                                                          "pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from engine.run.classifier import Classifier  # noqa: E402
from engine.serve.app import create_app  # noqa: E402
from engine.serve.settings import ServeSettings  # noqa: E402

from .support.data import COLOUR_SYSTEM  # noqa: E402
from .support.encoders import FakeEncoder  # noqa: E402

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def served_schema():
    clf = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder())
    app = create_app(ServeSettings(systems=(clf.system.name,), max_wait_ms=0, api_key=KEY), {clf.system.name: clf})
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"X-API-Key": KEY})


@pytest.mark.slow  # ~8 s of CPU: 12 generated requests per operation
def test_every_operation_answers_as_its_schema_says(served_schema):
    """(schemathesis' pytest plugin is not used: it fails to collect under this pytest; each operation's
    strategy is run with hypothesis directly)"""
    ran = []
    for result in served_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # every check but "schema-valid request accepted" (ST202): the document cannot say that image
            # bytes must decode, or that shortlist needs a class-name group, so those are 400s by design
            case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=[positive_data_acceptance])

        check()
        ran.append(operation.label)
    assert {"GET /v1/health", "GET /v1/systems", "GET /v1/models", "POST /v1/classify"} <= set(ran)
