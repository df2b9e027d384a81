"""A bounded fuzz of a real front from its own OpenAPI schema: no server error, nothing off-schema.

One null-backend worker serves MODEL, and every schema-valid chat request is aimed at it, so
generated values travel the whole way: front, msgpack job, Redis queue, worker, events back.
Other models have no worker, so a request for one is a 503 (`model_not_loaded`), an honest
answer; any other 5xx, or a response its operation does not document, fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import StartFront, StartWorker

MODEL = "smollm2-135m"
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Bounded: about ten runs of this many examples, a few milliseconds each.
EXAMPLES_PER_OPERATION = 40


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}: {response.text[:500]}")
    return None


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def aimed(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def fuzz(operation: schemathesis.APIOperation, *, mode: GenerationMode, base_url: str) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and operation.path == "/v1/chat/completions":
        strategy = strategy.map(aimed)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=10_000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)

    run()


@pytest.mark.redis
def test_generated_requests_get_no_server_error_and_fit_the_schema(
    start_worker: StartWorker, start_front: StartFront
) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null")
    url = start_front(INFERENCE_API_KEY=KEY, INFERENCE_REQUEST_TIMEOUT="5")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models/{model_id}/load"}
    for operation in operations:
        fuzz(operation, mode=GenerationMode.POSITIVE, base_url=url)
        if operation.body:
            fuzz(operation, mode=GenerationMode.NEGATIVE, base_url=url)
