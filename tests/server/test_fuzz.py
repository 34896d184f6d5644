"""Fuzzing: schemathesis generates requests from the gateway's own OpenAPI schema, valid ones
and invalid ones, and no answer may be a 5xx (the embedded model behind it cannot fail, so a 5xx
would be the gateway's own fault). A few hundred cases, derandomized; generation is kept tiny
(max_tokens at most 2, a 256-token window)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_multillm.server.openai_wire import ChatCompletionRequest, CompletionRequest
from tests import peers
from tests.server.conftest import KEY, Gateway, embedded, start_gateway

pytestmark = pytest.mark.timeout(1200)

# Cases per operation and mode: the generation routes get the most.
EXAMPLES = {"POST": 32, "GET": 5}


@pytest.fixture(scope="module")
def fuzz_gateway(
    server_deps: None, llama_cpp_available: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    small = {"n_ctx": 256, "max_tokens": 2}
    config = {
        "server": {"api_keys": [KEY], "max_request_bytes": 65536},
        "models": [
            embedded("smollm2", params=small),
            embedded("smollm2-text", kind="completion", params=small),
        ],
    }
    gw = start_gateway(config, tmp_path_factory.mktemp("fuzz") / "serve.yaml", name="fuzz")
    try:
        yield gw
    finally:
        peers.stop(gw.proc)


SERVED = {"/v1/chat/completions": "smollm2", "/v1/completions": "smollm2-text"}
# Wire fields llama.cpp's models do not take (refused by name, a 400: tested elsewhere).
NOT_TAKEN = {"typical_p", "logit_bias", "echo"}
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id"}
FIELDS = {
    "/v1/chat/completions": set(ChatCompletionRequest.model_fields),
    "/v1/completions": set(CompletionRequest.model_fields),
}


def tame(case: Any, positive: bool) -> None:
    """Keep generation tiny (at most 2 tokens, never unchecked); valid requests name a served
    model, so they reach it (random names are 404s, tested elsewhere)."""
    if positive:  # valid requests carry the key (schemathesis may make one up)
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
    body = case.body
    if not isinstance(body, dict):
        return
    if positive and isinstance(body.get("model"), str):
        body["model"] = SERVED.get(case.operation.path, "smollm2")
    fields = FIELDS.get(case.operation.path)
    if positive and fields is not None:
        for key in [k for k in body if k not in fields or k in NOT_TAKEN]:
            del body[key]  # fields the model refuses by name: tested elsewhere
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        if positive:
            for key in [k for k in message if k not in MESSAGE_FIELDS]:
                del message[key]
    for key in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 2:
            body[key] = 2
    if body.get("context_overflow") == "ignore":
        del body["context_overflow"]


def test_no_input_makes_the_gateway_fail(fuzz_gateway: Gateway) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")
    headers = {"Authorization": f"Bearer {KEY}"}
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    total = 0
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES.get(op.method.upper(), 5),
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal total
                total += 1
                tame(case, positive=mode is schemathesis.GenerationMode.POSITIVE)  # noqa: B023
                response = case.call(base_url=fuzz_gateway.url, headers=headers, timeout=120)
                statuses[f"{case.operation.path} {response.status_code}"] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.operation.method.upper()} {case.operation.path} -> {response.status_code}: "
                        f"{response.text[:300]} for {str(case.body)[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # nothing invalid to make (a GET without parameters): only in negative mode
                assert mode is schemathesis.GenerationMode.NEGATIVE
    print(sorted(statuses.items()))
    assert total >= 200
    assert failures == [], "\n".join(failures[:10])
    # the fuzzing reached the models, not only the gateway's refusals
    assert statuses["/v1/chat/completions 200"] >= 10
    assert statuses["/v1/completions 200"] >= 5
    assert statuses["/tokenize 200"] >= 3
    # and it still serves
    import httpx

    assert httpx.get(f"{fuzz_gateway.url}/health").status_code == 200
