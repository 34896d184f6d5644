"""The DeepSeek protocol fixture itself (tests/fixtures/deepseek_server.py), with plain httpx:
the key is required, reasoning sent back is refused, the window and the parameter ranges give
DeepSeek's statuses, requests the closed OpenAI spec refuses are refused, streams have the
OpenAI shape, and nothing the fixture serves breaks the spec (the violations list stays empty
after every test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.deepseek, pytest.mark.timeout(300)]

KEY = {"Authorization": "Bearer sk-fixture"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# Well over DeepSeek's 64-token cache unit, so a repeat shares at least one unit.
LONG_SYSTEM = "You are a weather assistant. " * 20


@pytest.fixture(scope="module")
def client(deepseek_server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deepseek_server_url, timeout=120, headers=KEY) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean_fixture(client: httpx.Client) -> Iterator[None]:
    client.post("/__fixture__/reset")
    yield
    client.post("/__fixture__/reset")
    assert client.get("/__fixture__/violations").json() == []


def chat(content: str, model: str = "deepseek-chat", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.setdefault("temperature", 0)
    body.update(kw)
    return body


def post(client: httpx.Client, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return client.post("/chat/completions", json=body, **kw)


def events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE body: ``data: {...}`` lines, ``data: [DONE]`` last."""
    out: list[Any] = []
    for line in response.text.splitlines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        out.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return out


def error_of(
    response: httpx.Response, status: int, error_type: str = "invalid_request_error"
) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    return error["message"]


def refusal_logged(client: httpx.Client) -> dict[str, Any]:
    (entry,) = client.get("/__fixture__/requests").json()
    return entry["refused"]


# ---- the key ----


@pytest.mark.parametrize("path", ["/models", "/v1/models"])
def test_models_need_a_key_and_list_both_models(client: httpx.Client, path: str) -> None:
    body = client.get(path).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["deepseek-chat", "deepseek-reasoner"]
    assert all(m["owned_by"] == "deepseek" and m["object"] == "model" for m in body["data"])
    missing = client.get(path, headers={"Authorization": ""})
    assert error_of(missing, 401, "authentication_error").startswith("Authentication Fails")
    wrong = client.get(path, headers={"Authorization": "Bearer not-a-deepseek-key-1234"})
    message = error_of(wrong, 401, "authentication_error")
    assert message == "Authentication Fails, Your api key: ****1234 is invalid"


def test_chat_needs_a_key_before_anything_else(client: httpx.Client) -> None:
    response = client.post(
        "/chat/completions", content=b"{not json", headers={"Authorization": "Basic x"}
    )
    assert error_of(response, 401, "authentication_error").startswith("Authentication Fails")
    assert client.get("/__fixture__/requests").json()[0]["has_authorization"] is True


# ---- answers ----


def test_completion_shape_and_usage(client: httpx.Client) -> None:
    response = post(client, chat("Name one colour.", max_tokens=8))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "deepseek-chat"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert "reasoning_content" not in choice["message"]  # deepseek-chat does not reason
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == (usage["prompt_tokens"])
    )
    assert 0 < usage["completion_tokens"] <= 8


def test_stream_shape_and_agreement(client: httpx.Client) -> None:
    body = chat("Name one colour.", max_tokens=8)
    whole = post(client, body).json()
    response = post(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response)
    assert got[-1] == "[DONE]"
    chunks, usage_chunk = got[:-2], got[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in got[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage_chunk["choices"] == []
    expected = {**whole["usage"]}
    # The repeat shares its whole prompt with the first request: the cache may hit.
    for key in ("prompt_cache_hit_tokens", "prompt_cache_miss_tokens"):
        expected.pop(key)
        usage_chunk["usage"].pop(key)
    assert usage_chunk["usage"] == expected
    plain = events(post(client, {**body, "stream": True}))
    assert plain[-1] == "[DONE]" and all("usage" not in c for c in plain[:-1])


def test_reasoner_reasons_first(client: httpx.Client) -> None:
    body = chat("Is 7 a prime number?", model="deepseek-reasoner", max_tokens=12)
    whole = post(client, body).json()
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]
    usage = whole["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning <= 32  # --reasoning-max-tokens
    assert usage["completion_tokens"] > reasoning
    got = events(post(client, {**body, "stream": True, "stream_options": {"include_usage": True}}))
    deltas = [c["choices"][0]["delta"] for c in got[:-2]]
    kinds = [
        "r" if d.get("reasoning_content") else "c"
        for d in deltas
        if d.get("reasoning_content") or d.get("content")
    ]
    assert kinds == sorted(kinds, reverse=True)  # all reasoning, then all content
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    assert got[-2]["usage"]["completion_tokens_details"] == usage["completion_tokens_details"]


def test_reasoner_ignores_sampling_and_refuses_logprobs(client: httpx.Client) -> None:
    body = chat("Is 7 a prime number?", model="deepseek-reasoner", max_tokens=6)
    greedy = post(client, body).json()["choices"][0]["message"]
    hot = post(client, {**body, "temperature": 1.5, "top_p": 0.5}).json()["choices"][0]["message"]
    assert hot == greedy
    refused = post(client, {**body, "logprobs": True})
    assert "logprobs" in error_of(refused, 400)


def test_reasoning_sent_back_is_a_400(client: httpx.Client) -> None:
    history = [
        {"role": "user", "content": "Is 7 a prime number?"},
        {"role": "assistant", "content": "Yes.", "reasoning_content": "7 has no divisors."},
        {"role": "user", "content": "And 9?"},
    ]
    body = {"model": "deepseek-reasoner", "messages": history, "max_tokens": 4}
    message = error_of(post(client, body), 400)
    assert "messages[1]" in message and "reasoning_content" in message
    del history[1]["reasoning_content"]
    assert post(client, body).status_code == 200


def test_tool_call_required_and_streamed(client: httpx.Client) -> None:
    body = chat(
        "What is the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40
    )
    whole = post(client, body).json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_0_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    got = events(post(client, {**body, "stream": True}))
    assert got[-1] == "[DONE]"
    parts = [p for c in got[:-1] for p in c["choices"][0]["delta"].get("tool_calls") or []]
    assert parts[0]["function"]["name"] == "get_weather" and parts[0]["id"].startswith("call_0_")
    assert "".join(p["function"]["arguments"] for p in parts) == call["function"]["arguments"]
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"
    named = {**body, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    assert post(client, named).json()["choices"][0]["finish_reason"] == "tool_calls"
    off = post(client, {**body, "tool_choice": "none", "max_tokens": 4}).json()
    assert "tool_calls" not in off["choices"][0]["message"]


def test_json_mode(client: httpx.Client) -> None:
    body = chat(
        "Give JSON with keys name and age for Alice, 30.",
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    content = post(client, body).json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)  # an object; its words are the tiny model's
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    refused = post(client, {**body, "response_format": schema})
    assert error_of(refused, 400) == "This response_format type is unavailable now"


def test_a_stop_sequence_ends_the_answer_and_is_left_out(client: httpx.Client) -> None:
    body = chat("Count: one, two, three, four", max_tokens=20)
    full = post(client, body).json()["choices"][0]["message"]["content"]
    word = full.split()[2]
    stopped = post(client, {**body, "stop": [word]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["message"]["content"] == full[: full.index(word)]
    got = events(post(client, {**body, "stop": word, "stream": True}))
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in got[:-1]) == full[: full.index(word)]
    )


def test_logprobs(client: httpx.Client) -> None:
    body = chat("Hi", max_tokens=2, logprobs=True, top_logprobs=2)
    logprobs = post(client, body).json()["choices"][0]["logprobs"]
    assert len(logprobs["content"]) == 2
    assert all(len(c["top_logprobs"]) == 2 for c in logprobs["content"])


def test_prompt_cache_hits_a_shared_prefix(client: httpx.Client) -> None:
    def usage(question: str, model: str = "deepseek-chat") -> dict[str, int]:
        body = chat(question, model=model, max_tokens=1)
        body["messages"].insert(0, {"role": "system", "content": LONG_SYSTEM})
        return post(client, body).json()["usage"]

    first = usage("Is it raining in Paris?")
    assert first["prompt_cache_hit_tokens"] == 0
    again = usage("Is it sunny in Rome?")
    hit = again["prompt_cache_hit_tokens"]
    assert hit > 0 and hit % 64 == 0
    assert hit + again["prompt_cache_miss_tokens"] == again["prompt_tokens"]
    assert (
        usage("Is it raining in Paris?", model="deepseek-reasoner")["prompt_cache_hit_tokens"] == 0
    )
    client.post("/__fixture__/reset")
    assert usage("Is it sunny in Rome?")["prompt_cache_hit_tokens"] == 0


# ---- limits and rules ----


def test_a_prompt_over_the_window_is_a_400(client: httpx.Client) -> None:
    text = "hello " * 2100
    message = error_of(post(client, chat(text)), 400)
    assert message.startswith("This model's maximum context length is 2048 tokens. However, your")
    n = int(message.split("resulted in ")[1].split()[0])
    assert n > 2048
    near = "hello " * 1950
    fits = post(client, chat(near, max_tokens=1)).json()["usage"]["prompt_tokens"]
    over = post(client, chat(near, max_tokens=2048 - fits + 1))
    assert error_of(over, 400) == (
        f"This model's maximum context length is 2048 tokens. However, you requested 2049 "
        f"tokens ({fits} in the messages, {2048 - fits + 1} in the completion). Please reduce "
        "the length of the messages or completion."
    )
    assert post(client, chat(near, max_tokens=2048 - fits)).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chat("Hi", max_tokens=8193), "the valid range of max_tokens is [1, 8192]"),
        (chat("Hi", model="deepseek-reasoner", max_tokens=0), "range of max_tokens is [1, 65536]"),
        (chat("Hi", temperature=2.5), "temperature"),
        (chat("Hi", top_logprobs=21, logprobs=True), "top_logprobs"),
        (chat("Hi", n=2), "n=1"),
    ],
)
def test_values_out_of_range_are_422(
    client: httpx.Client, body: dict[str, Any], message: str
) -> None:
    assert message in error_of(post(client, body), 422)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (chat("Hi", max_completion_token=3), "<body>"),
        (chat("Hi", max_tokens="3"), "max_tokens"),
        (chat("Hi", stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (
            {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi", "x": 1}]},
            "messages[0]",
        ),
        ({"model": "deepseek-chat", "messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "<body>"),
        (
            {"model": "deepseek-chat", "messages": [{"role": "developer", "content": "Hi"}]},
            "unknown variant `developer`",
        ),
        (
            {
                "model": "deepseek-chat",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "http://x.invalid/y.png"}}
                        ],
                    }
                ],
            },
            "unknown variant `image_url`, expected `text`",
        ),
        (
            {
                "model": "deepseek-chat",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                ],
            },
            "messages[0]: invalid type: sequence, expected a string",
        ),
        (
            chat("Hi", tools=[{"type": "custom", "custom": {"name": "x"}}]),
            "unknown variant `custom`",
        ),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, body: dict[str, Any], where: str) -> None:
    message = error_of(post(client, body), 400)
    assert message.startswith("Failed to deserialize the JSON body into the target type: ")
    assert where in message
    assert refusal_logged(client)["status"] == 400


def test_unknown_model_and_bad_json(client: httpx.Client) -> None:
    assert error_of(post(client, chat("Hi", model="deepseek-coder")), 400) == "Model Not Exist"
    bad = client.post(
        "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert error_of(bad, 400).startswith("Invalid JSON body")


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [
        (402, "unknown_error", "Insufficient Balance"),
        (429, "rate_limit_error", "Rate Limit Reached"),
        (500, "api_error", "Server Error"),
        (503, "service_unavailable_error", "Server Overloaded"),
    ],
)
def test_forced_failures_for_the_next_requests(
    client: httpx.Client, status: int, error_type: str, message: str
) -> None:
    state = {"fail_next": 2, "fail_status": status, "retry_after_s": 0.5}
    client.post("/__fixture__/state", json=state)
    first = post(client, chat("Hi", max_tokens=1))
    assert error_of(first, status, error_type) == message
    if status in (429, 503):
        assert first.headers["retry-after"] == "0.5"
    assert error_of(client.get("/models"), status, error_type) == message
    assert post(client, chat("Hi", max_tokens=1)).status_code == 200
    assert client.post("/__fixture__/state", json={"fail_status": 404}).status_code == 400


def test_the_request_log_keeps_bodies_and_drops_the_key(client: httpx.Client) -> None:
    body = chat("Hi", max_tokens=1)
    post(client, body, headers={"x-trace": "t1"})
    (entry,) = client.get("/__fixture__/requests").json()
    assert entry["path"] == "/chat/completions" and entry["json"] == body
    assert entry["headers"]["x-trace"] == "t1"
    assert entry["has_authorization"] is True and "authorization" not in entry["headers"]
    assert "sk-fixture" not in json.dumps(entry)
