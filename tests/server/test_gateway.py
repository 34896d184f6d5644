"""The real gateway (``multillm serve`` on uvicorn, its own process) with the embedded SmolLM2
behind it, spoken to with the real clients: the ``openai`` SDK (sync, async, streamed),
LangChain's ``ChatOpenAI``, and this package's ``ChatVLLMServer``. Nothing here depends on
the tiny model's words: only on shapes, counts, finish reasons and statuses."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from tests.server.conftest import KEY, Gateway

pytestmark = pytest.mark.timeout(300)

HI = [{"role": "user", "content": "Say hi."}]


def sdk(gateway: Gateway, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=KEY, max_retries=0, timeout=120, **kw)


def events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


# ---------------------------------------------------------------- the openai SDK


def test_openai_sdk_chat(gateway: Gateway) -> None:
    resp = sdk(gateway).chat.completions.create(
        model="smollm2", messages=HI, max_tokens=5, extra_body={"data": {"docs": ["a", 1]}}
    )
    assert resp.object == "chat.completion"
    assert resp.model == "smollm2"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert 0 < resp.usage.completion_tokens <= 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.model_extra is not None and resp.model_extra["data"] == {"docs": ["a", 1]}


def test_finish_reason_length_is_passed_on(gateway: Gateway) -> None:
    resp = sdk(gateway).chat.completions.create(model="smollm2", messages=HI, max_tokens=1)
    assert resp.usage is not None and resp.usage.completion_tokens == 1
    assert resp.choices[0].finish_reason == "length"


def test_max_new_tokens_is_an_alias(gateway: Gateway) -> None:
    resp = sdk(gateway).chat.completions.create(
        model="smollm2", messages=HI, extra_body={"max_new_tokens": 2}
    )
    assert resp.usage is not None and resp.usage.completion_tokens <= 2


async def test_openai_sdk_async(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=KEY, max_retries=0) as client:
        resp = await client.chat.completions.create(model="smollm2", messages=HI, max_tokens=3)
        assert resp.choices[0].finish_reason in ("stop", "length")
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=HI,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_openai_sdk_stream(gateway: Gateway) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="smollm2",
        messages=HI,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = sdk(gateway).chat.completions.create(
        model="smollm2", messages=HI, max_tokens=4, temperature=0
    )
    # greedy: the stream and the whole answer agree, and so do their counts
    assert text == whole.choices[0].message.content
    assert whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )


def test_no_usage_chunk_unless_asked(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": HI, "max_tokens": 2, "stream": True},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = events(r.text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_data_passes_through_a_stream_after_done(client: httpx.Client) -> None:
    data = {"reranked_docs": [{"text": "x", "score": 0.5}], "n": [1, 2]}
    r = client.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": HI, "max_tokens": 2, "stream": True, "data": data},
    )
    lines = [line for line in r.text.splitlines() if line]
    assert lines[-2] == "data: [DONE]"
    assert lines[-1].startswith("json: ")
    assert json.loads(lines[-1][len("json: ") :]) == data


def test_tools_and_tool_messages(gateway: Gateway) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    client = sdk(gateway)
    resp = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
    )
    calls = resp.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    assert isinstance(args, dict)
    follow = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Weather in Paris?"},
            resp.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
        ],
        tools=[tool],  # type: ignore[list-item]
        max_tokens=3,
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_completions_route(gateway: Gateway, client: httpx.Client) -> None:
    resp = sdk(gateway).completions.create(model="smollm2-text", prompt="Once upon", max_tokens=3)
    assert resp.object == "text_completion"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 3
    stream = sdk(gateway).completions.create(
        model="smollm2-text",
        prompt="Once upon",
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 3
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    # a chat model is not a completion model, and the other way round
    r = client.post("/v1/completions", json={"model": "smollm2", "prompt": "x"})
    assert r.status_code == 404 and "use /v1/chat/completions" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": "smollm2-text", "messages": HI})
    assert r.status_code == 404 and "use /v1/completions" in r.json()["error"]["message"]


# ---------------------------------------------------------------- LangChain's ChatOpenAI


def test_chat_openai(gateway: Gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=gateway.v1,
        api_key=KEY,  # type: ignore[arg-type]
        model="smollm2",
        max_tokens=4,  # type: ignore[call-arg]
        max_retries=0,
        stream_usage=True,
    )
    msg = llm.invoke("Say hi.")
    assert isinstance(msg.content, str)
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] <= 4
    chunks = list(llm.stream("Say hi."))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c  # type: ignore[assignment]
    assert total.usage_metadata is not None  # type: ignore[attr-defined]
    assert total.response_metadata["finish_reason"] in ("stop", "length")


# ---------------------------------------------------------------- this package's ChatVLLMServer


def test_chat_vllm_server_gets_exact_counts_and_limits(gateway: Gateway) -> None:
    from langchain_multillm import ChatLlamaCpp, ChatVLLMServer

    remote = ChatVLLMServer(base_url=gateway.v1, model="smollm2", api_key=KEY, max_tokens=4)
    local = ChatLlamaCpp(n_threads=2)
    messages = [("system", "You are terse."), ("user", "Count the tokens of this, exactly.")]
    assert remote.get_limits().context_window == 2048
    assert remote.count_tokens(messages) == local.count_tokens(messages)
    assert remote.count_tokens("plain text prompt") == local.count_tokens("plain text prompt")
    n = local.count_tokens(messages)
    report = remote.check_fit(messages, max_tokens=100)
    assert report.fits and report.context_window == 2048
    assert report.prompt_tokens >= n  # decided by the cheap upper bound
    tight = remote.check_fit(messages, max_tokens=2048 - n)  # the bound cannot decide this
    assert (tight.fits, tight.exact, tight.prompt_tokens) == (True, True, n)
    over = remote.check_fit(messages, max_tokens=2048 - n + 1)
    assert (over.fits, over.prompt_tokens) == (False, n)
    answer = remote.invoke(messages)
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == local.count_tokens(messages)
    streamed = list(remote.stream(messages))
    assert streamed[-1].response_metadata["finish_reason"] in ("stop", "length")
    assert remote.health().ready


# ---------------------------------------------------------------- errors, through HTTP


def test_keys(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=gateway.v1, api_key="wrong", max_retries=0).models.list()
    assert err.value.status_code == 401
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_api_key"
    assert "wrong" not in str(body)
    r = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "smollm2", "messages": HI})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for route in ("/health", "/ready", "/v1/health_check", "/metrics"):  # probes need no key
        assert httpx.get(gateway.url + route).status_code == 200


def test_unknown_model(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk(gateway).chat.completions.create(model="gpt-17", messages=HI)  # type: ignore[arg-type]
    assert err.value.body["param"] == "model"  # type: ignore[index]


def test_over_the_window_is_a_400_before_anything_is_sent(
    gateway: Gateway, client: httpx.Client
) -> None:
    before = _metric(client, "multillm_fit_refusals_total", model="smollm2")
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).chat.completions.create(model="smollm2", messages=HI, max_tokens=4000)
    body = err.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"], body["type"]) == (
        "context_length_exceeded",
        "messages",
        "ContextWindowExceededError",
    )
    assert "2048" in body["message"] and "4000" in body["message"]
    long_prompt = [{"role": "user", "content": "hello " * 2500}]
    r = client.post(
        "/v1/chat/completions", json={"model": "smollm2", "messages": long_prompt, "max_tokens": 1}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    numbers = [int(n) for n in re.findall(r"\d+", r.json()["error"]["message"])]
    assert 2048 in numbers and any(n > 2048 for n in numbers)
    assert _metric(client, "multillm_fit_refusals_total", model="smollm2") == before + 2


def test_clamp_lowers_max_tokens_to_the_room_left(client: httpx.Client) -> None:
    def count(k: int) -> int:
        body = {"model": "small", "messages": _words(k)}
        return int(client.post("/tokenize", json=body).json()["count"])

    base, per = count(100), count(101) - count(100)
    k = 100 + (256 - 10 - base) // per
    room = 256 - count(k)
    assert 0 < room < 20
    body = {"model": "small", "messages": _words(k), "max_tokens": 500}
    assert client.post("/v1/chat/completions", json=body).status_code == 400
    r = client.post("/v1/chat/completions", json={**body, "context_overflow": "clamp"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= room


def _words(k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hello " * k}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, "body"),
        (b"", 400, "body"),
        (b"[1, 2]", 422, "body"),
        (json.dumps({"model": "smollm2"}).encode(), 422, "messages"),
        (json.dumps({"model": "smollm2", "messages": "hi"}).encode(), 422, "messages"),
        (
            json.dumps(
                {"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}
            ).encode(),
            422,
            "messages[0].role",
        ),
        (
            json.dumps({"model": "smollm2", "messages": HI, "temperature": "hot"}).encode(),
            422,
            "temperature",
        ),
        (
            json.dumps(
                {"model": "smollm2", "messages": [{"role": "tool", "content": "3"}]}
            ).encode(),
            422,
            "messages[0].tool_call_id",
        ),
        (json.dumps({"model": "smollm2", "messages": HI, "n": 2}).encode(), 400, "n"),
        (
            json.dumps({"model": "smollm2", "messages": HI, "frobnicate": 1}).encode(),
            400,
            "frobnicate",
        ),
        (
            json.dumps({"model": "smollm2", "messages": HI, "temperature": 1, "top_p": 0}).encode(),
            422,
            "top_p",
        ),
    ],
)
def test_bad_requests_name_the_field(
    client: httpx.Client, body: bytes, status: int, param: str
) -> None:
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert param.split("[")[0] in err["message"] or param == "body"


def test_an_image_for_a_text_only_model_is_a_400(client: httpx.Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    text = {"type": "text", "text": "What is this?"}
    for stream in (False, True):
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": [text, image]}],
                "stream": stream,
            },
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        param = "messages[0].content[1].type"
        assert (error["type"], error["param"]) == ("InvalidInputError", param)
        assert "'image_url'" in error["message"] and "'text'" in error["message"]
    r = client.post("/tokenize", json={"messages": [{"role": "user", "content": [image]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].type"


def test_too_large_is_a_413(client: httpx.Client) -> None:
    big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_unknown_routes_answer_in_the_error_shape(client: httpx.Client) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


# ---------------------------------------------------------------- the other routes


def test_models_route(gateway: Gateway) -> None:
    models = {m.id: m for m in sdk(gateway).models.list().data}
    windows = {name: m.model_extra and m.model_extra["max_model_len"] for name, m in models.items()}
    assert windows == {"smollm2": 2048, "smollm2-text": 2048, "small": 256}


def test_tokenize_route(client: httpx.Client) -> None:
    from langchain_multillm import ChatLlamaCpp

    local = ChatLlamaCpp(n_threads=2)
    r = client.post("/tokenize", json={"prompt": "Hello world, twice over."})
    assert r.json() == {
        "count": local.count_tokens("Hello world, twice over."),
        "max_model_len": 2048,
    }
    messages = [{"role": "user", "content": "Hello"}]
    r = client.post("/tokenize", json={"model": "smollm2", "messages": messages})
    assert r.json()["count"] == local.count_tokens(messages)
    plain = client.post("/tokenize", json={"prompt": "Hello world"}).json()["count"]
    bare = client.post(
        "/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}
    ).json()["count"]
    assert bare == plain - local.count_tokens("")
    r = client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "add_generation_prompt"
    assert client.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404
    assert client.post("/tokenize", json={}).status_code == 400
    r = client.post("/tokenize", json={"model": "smollm2-text", "prompt": "Hello world"})
    assert r.status_code == 200


def test_health_routes(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/health")
    assert (r.status_code, r.content) == (200, b"")
    assert httpx.get(f"{gateway.url}/v1/health_check").status_code == 200
    first = httpx.get(f"{gateway.url}/ready")
    assert first.status_code == 200
    body = first.json()
    assert body["ready"] is True
    assert set(body["models"]) == {"smollm2", "smollm2-text", "small"}
    report = body["models"]["smollm2"]
    assert report["alive"] and report["ready"] and report["context_window"] == 2048
    # cached: a probe storm reaches the model once per period
    again = httpx.get(f"{gateway.url}/ready").json()["models"]["smollm2"]
    assert again["latency_s"] == report["latency_s"]
    one = httpx.get(f"{gateway.url}/ready", params={"model": "smollm2-text"})
    assert one.status_code == 200 and set(one.json()["models"]) == {"smollm2-text"}
    assert httpx.get(f"{gateway.url}/ready", params={"model": "nope"}).status_code == 404


def _metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics(client: httpx.Client) -> None:
    before = _metric(
        client,
        "multillm_requests_total",
        model="smollm2",
        route="/v1/chat/completions",
        status="200",
    )
    tokens_before = _metric(client, "multillm_tokens_total", model="smollm2", direction="out")
    r = client.post(
        "/v1/chat/completions", json={"model": "smollm2", "messages": HI, "max_tokens": 2}
    )
    out = r.json()["usage"]["completion_tokens"]
    client.post("/v1/chat/completions", json={"model": "smollm2", "messages": HI, "n": 3})
    client.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": HI, "max_tokens": 2, "stream": True},
    )
    after = _metric(
        client,
        "multillm_requests_total",
        model="smollm2",
        route="/v1/chat/completions",
        status="200",
    )
    assert after == before + 2
    assert _metric(client, "multillm_tokens_total", model="smollm2", direction="out") >= (
        tokens_before + out
    )
    text = client.get("/metrics").text
    for name in (
        "multillm_request_duration_seconds_bucket",
        "multillm_time_to_first_token_seconds_bucket",
        "multillm_in_flight",
        "multillm_queue_depth",
        "multillm_fit_refusals_total",
    ):
        assert name in text
    assert _metric(client, "multillm_errors_total", model="smollm2", type="InvalidInputError") >= 1
    assert _metric(client, "multillm_in_flight", model="smollm2") == 0


def test_openapi_and_docs(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize"} <= set(
        doc["paths"]
    )
    assert "ChatCompletionRequest" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    page = httpx.get(f"{gateway.url}/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
