"""ChatVLLMServer / VLLMServer against an in-memory OpenAI-protocol server (httpx.MockTransport)."""

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from langchain_core.load import dumpd, dumps
from langchain_core.messages import ChatMessage, HumanMessage
from pydantic import SecretStr, ValidationError

from langchain_multillm import (
    AuthenticationError,
    BackendError,
    BadRequestError,
    ChatVLLMServer,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    RateLimitError,
    VLLMServer,
)
from langchain_multillm._http import ClientCredentials
from langchain_multillm.errors import MultiLLMWarning

from .fake_server import BASE, FakeServer, chunk, completion, sse


def model(fake: FakeServer, **kw):
    return ChatVLLMServer(model="m", max_retries=kw.pop("max_retries", 0), **fake.clients(), **kw)


# ---- input checks, before any request ----


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_call_arguments_raise_before_sending(kwargs: dict, field: str) -> None:
    fake = FakeServer()
    with pytest.raises(InvalidInputError) as info:
        model(fake).invoke("hi", **kwargs)
    assert info.value.field == field
    assert sum(fake.calls.values()) == 0


def test_no_messages_and_unknown_role() -> None:
    fake = FakeServer()
    with pytest.raises(InvalidInputError, match="messages"):
        model(fake).invoke([])
    with pytest.raises(InvalidInputError, match=r"messages\[0\]\.role.*wizard"):
        model(fake).invoke([ChatMessage(role="wizard", content="x")])
    assert sum(fake.calls.values()) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": "ftp://x/v1"}, "base_url"),
        ({"model": ""}, "model"),
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_construction_names_the_field(kwargs: dict, field: str) -> None:
    args = {"base_url": BASE, "model": "m", **kwargs}
    with pytest.raises((ValidationError, InvalidInputError)) as info:
        ChatVLLMServer(**args)
    assert field in str(info.value)


def test_base_url_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_BASE_URL", raising=False)
    monkeypatch.delenv("LLM_MODEL_SERVER_ENDPOINT", raising=False)
    with pytest.raises((ValidationError, InvalidInputError), match="VLLM_BASE_URL"):
        ChatVLLMServer(model="m")


# ---- fit before sending ----


def test_overflow_raises_before_the_chat_request() -> None:
    fake = FakeServer(window=100)
    with pytest.raises(ContextWindowExceededError) as info:
        model(fake).invoke("x" * 200, max_tokens=10)
    assert fake.calls["/v1/chat/completions"] == 0
    assert info.value.limit == 100 and info.value.fit is not None and info.value.fit.exact


def test_far_from_limit_needs_no_exact_count() -> None:
    fake = FakeServer(window=10_000)
    m = model(fake)
    m.invoke("hi")
    probes = fake.calls["/tokenize"]  # availability + the template probes, once
    for _ in range(5):
        m.invoke("hi there", max_tokens=5)
    assert fake.calls["/tokenize"] == probes  # the byte bound decided every time
    assert m.check_fit("hi").exact is False


def test_near_the_limit_counts_exactly() -> None:
    fake = FakeServer(window=60)
    m = model(fake)
    r = m.check_fit("x" * 45, max_tokens=10)  # bound 52 + 10 > 60: counted, 50 + 10 fits
    assert r.exact and r.fits and r.prompt_tokens == 3 + 2 + 45


def test_clamp_sends_the_room_left() -> None:
    fake = FakeServer(window=100)
    m = model(fake, context_overflow="clamp")
    m.invoke("x" * 50, max_tokens=500)
    assert fake.bodies[-1]["max_tokens"] == 100 - (3 + 2 + 50)


def test_ignore_sends_anyway() -> None:
    fake = FakeServer(window=10)
    model(fake).invoke("x" * 50, context_overflow="ignore")
    assert fake.calls["/v1/chat/completions"] == 1


def test_unknown_window_warns_once_and_never_blocks() -> None:
    fake = FakeServer(window=None, tokenize=False)
    m = model(fake)
    with pytest.warns(MultiLLMWarning, match="context window is unknown"):
        m.invoke("x" * 5000)
    m.invoke("again")  # no second warning (filterwarnings=error would fail here)
    assert m.check_fit("x").reason == "window unknown"


def test_configured_window_when_server_reports_none() -> None:
    fake = FakeServer(window=None, tokenize=False)
    m = model(fake, context_window=50)
    # Over the byte bound, but it may fit (no exact count here): sent, the server judges.
    r = m.check_fit("x" * 100)
    assert r.fits and not r.exact and r.counted == "range" and r.prompt_tokens_min == 1
    # Proven over by the lower bound (20,000 bytes are at least 79 tokens): refused.
    r = m.check_fit("x" * 20_000)
    assert not r.fits and r.counted == "lower_bound" and r.prompt_tokens == 79


def test_limits_fill_profile_and_context_window() -> None:
    fake = FakeServer(window=4096)
    m = model(fake)
    assert m.context_window is None
    m.get_limits()
    assert m.context_window == 4096
    assert m.profile is not None and m.profile["max_input_tokens"] == 4096


def test_get_num_tokens_from_messages_is_count_tokens() -> None:
    fake = FakeServer()
    m = model(fake)
    msgs = [HumanMessage("hello")]
    assert m.get_num_tokens_from_messages(msgs) == m.count_tokens(msgs) == 3 + 2 + 5
    assert m.get_num_tokens("hello") == 5


# ---- responses, streams, errors ----


def test_payload_carries_sampling_and_extras() -> None:
    fake = FakeServer()
    m = model(fake, temperature=0.1, top_k=5, min_p=0.05, repetition_penalty=1.1, seed=7)
    m.invoke("hi", stop=["\n"], max_tokens=9)
    body = fake.bodies[-1]
    assert body["model"] == "m" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_k"], body["min_p"], body["repetition_penalty"]) == (
        0.1,
        5,
        0.05,
        1.1,
    )
    assert (body["seed"], body["stop"], body["max_tokens"]) == (7, ["\n"], 9)
    assert "stream" not in body


def test_stream_asks_for_usage_and_returns_it() -> None:
    fake = FakeServer()
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    fake.chat = [
        httpx.Response(
            200, content=sse([chunk("he"), chunk("llo"), chunk(finish="stop"), chunk(usage=usage)])
        )
    ]
    chunks = list(model(fake).stream("hi"))
    assert fake.bodies[-1]["stream_options"] == {"include_usage": True}
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content == "hello"
    assert full.usage_metadata == {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["model_name"] == "m"


@pytest.mark.parametrize(
    "events",
    [
        [chunk("he"), chunk("llo")],  # no finish_reason, no [DONE]: connection cut
        [chunk("he"), chunk(finish="stop")],  # finished, but the [DONE] marker never came
    ],
)
def test_cut_stream_is_an_error_not_an_answer(events: list) -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(200, content=sse(events, done=False))]
    with pytest.raises(IncompleteResponseError):
        list(model(fake).stream("hi"))
    with pytest.raises(IncompleteResponseError):
        model(fake, streaming=True).invoke("hi")


def test_stream_done_without_finish_reason() -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(200, content=sse([chunk("he")], done=True))]
    with pytest.raises(IncompleteResponseError) as info:
        list(model(fake).stream("hi"))
    assert info.value.partial_text == "he"


def test_body_without_finish_reason_is_incomplete() -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(200, json=completion(finish=None))]
    with pytest.raises(IncompleteResponseError):
        model(fake).invoke("hi")


@pytest.mark.parametrize("content", [b"not json", b'{"choices": []}', b'{"unexpected": 1}'])
def test_malformed_body_is_a_typed_error(content: bytes) -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(200, content=content)]
    with pytest.raises(BackendError, match="malformed"):
        model(fake).invoke("hi")


def test_server_context_error_maps() -> None:
    fake = FakeServer()
    msg = "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input tokens."
    fake.chat = [
        httpx.Response(
            400, json={"error": {"message": msg, "type": "BadRequestError", "code": 400}}
        )
    ]
    with pytest.raises(ContextWindowExceededError, match="maximum context length"):
        model(fake).invoke("hi", context_overflow="ignore")


def test_bad_request_not_retried() -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(400, json={"error": {"message": "bad"}})]
    with pytest.raises(BadRequestError):
        model(fake, max_retries=3).invoke("hi")
    assert fake.calls["/v1/chat/completions"] == 1


def test_429_retried_honouring_retry_after() -> None:
    fake = FakeServer()
    fake.chat = [
        httpx.Response(429, headers={"retry-after": "0.3"}, json={"error": {"message": "slow"}}),
        httpx.Response(200, json=completion("ok")),
    ]
    started = time.perf_counter()
    out = model(fake, max_retries=2).invoke("hi")
    assert out.content == "ok"
    assert fake.calls["/v1/chat/completions"] == 2
    assert time.perf_counter() - started >= 0.3


def test_retries_are_bounded() -> None:
    fake = FakeServer()
    fake.chat = [
        httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow"}})
    ]
    with pytest.raises(RateLimitError):
        model(fake, max_retries=2).invoke("hi")
    assert fake.calls["/v1/chat/completions"] == 3


def test_stream_retried_before_first_chunk_only() -> None:
    fake = FakeServer()
    fake.chat = [
        httpx.Response(503, json={"error": {"message": "loading"}}),
        httpx.Response(200, content=sse([chunk("a"), chunk(finish="stop")])),
    ]
    assert "".join(c.content for c in model(fake, max_retries=1).stream("hi")) == "a"
    assert fake.calls["/v1/chat/completions"] == 2

    fake2 = FakeServer()
    fake2.chat = [httpx.Response(200, content=sse([chunk("a")], done=False))]
    with pytest.raises(IncompleteResponseError):
        list(model(fake2, max_retries=3).stream("hi"))
    assert fake2.calls["/v1/chat/completions"] == 1  # never after the first streamed token


async def test_async_paths_match_sync() -> None:
    fake = FakeServer()
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    fake.chat = [
        httpx.Response(
            200, content=sse([chunk("he"), chunk("llo"), chunk(finish="stop"), chunk(usage=usage)])
        )
    ]
    m = model(fake)
    parts = [c async for c in m.astream("hi")]
    full = parts[0]
    for c in parts[1:]:
        full += c
    assert full.content == "hello" and full.usage_metadata["total_tokens"] == 6
    fake.chat = [httpx.Response(200, json=completion("sync"))]
    assert (await m.ainvoke("hi")).content == "sync"
    assert (await m.acheck_fit("hi")).fits
    assert (await m.acount_tokens("abc")) == 3


# ---- health ----


def test_health_ready_and_not_served() -> None:
    fake = FakeServer(window=2048)
    h = model(fake).health()
    assert h.alive and h.ready and h.context_window == 2048 and h.model == "m"
    other = ChatVLLMServer(model="other", **fake.clients())
    h2 = other.health()
    assert h2.alive and not h2.ready and "not served" in h2.detail


def test_health_never_raises_and_is_bounded() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    m = ChatVLLMServer(
        model="m", base_url=BASE, http_client=httpx.Client(transport=httpx.MockTransport(hang))
    )
    h = m.health()
    assert not h.alive and not h.ready and "could not connect" in h.detail
    assert m.is_alive() is False


def test_health_against_a_closed_port_is_fast() -> None:
    from tests.peers import free_port

    m = ChatVLLMServer(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", health_timeout=1.0)
    started = time.perf_counter()
    assert m.is_alive() is False
    assert asyncio.run(m.ais_alive()) is False
    assert time.perf_counter() - started < 2.5


# ---- secrets and auth ----


def test_secrets_never_show() -> None:
    m = ChatVLLMServer(
        model="m",
        base_url=BASE,
        api_key="sk-very-secret",
        oauth_client_id="cid",
        oauth_client_secret="oauth-very-secret",
        oauth_token_url="http://idp.invalid/token",
    )
    assert isinstance(m.api_key, SecretStr)
    for text in (repr(m), str(m), dumps(m), json.dumps(dumpd(m)), m.model_dump_json()):
        assert "sk-very-secret" not in text
        assert "oauth-very-secret" not in text


def test_api_key_header_and_it_wins_over_oauth() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return FakeServer().handler(request)

    m = ChatVLLMServer(
        model="m",
        base_url=BASE,
        api_key="k1",
        oauth_client_id="cid",
        oauth_client_secret="s",
        oauth_token_url="http://idp.invalid/token",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    m.invoke("hi")
    assert set(seen) == {"Bearer k1"}


def test_seed_deployment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_BASE_URL", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setenv("LLM_MODEL_SERVER_ENDPOINT", "http://seed.invalid:8000/v1")
    monkeypatch.setenv("LLM_VLLM_API_KEY", "seed-key")
    monkeypatch.setenv("LLM_VLLM_CLIENT_ID", "cid")
    monkeypatch.setenv("LLM_VLLM_CLIENT_SECRET", "csecret")
    monkeypatch.setenv("LLM_VLLM_TOKEN_URL", "http://idp.invalid/token")
    monkeypatch.setenv("LLM_TLS_SKIP_VERIFY", "true")
    with pytest.warns(MultiLLMWarning, match="verify_ssl=False"):
        m = ChatVLLMServer(model="m")
    assert m.base_url == "http://seed.invalid:8000/v1"
    assert m.api_key is not None and m.api_key.get_secret_value() == "seed-key"
    assert m.oauth_client_id == "cid" and m.oauth_token_url == "http://idp.invalid/token"
    assert m.verify_ssl is False


def test_oauth_partial_settings_refused() -> None:
    with pytest.raises((ValidationError, InvalidInputError), match="oauth"):
        ChatVLLMServer(model="m", base_url=BASE, oauth_client_id="cid")


def test_client_credentials_fetch_cache_and_refresh() -> None:
    tokens = iter(["t1", "t2", "t3"])
    token_calls: list[dict] = []

    def idp(request: httpx.Request) -> httpx.Response:
        form = dict(x.split("=") for x in request.content.decode().split("&"))
        token_calls.append(form)
        return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 3600})

    api_auth: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        api_auth.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer t2" and len(api_auth) == 3:
            return httpx.Response(401, json={"error": {"message": "expired"}})
        return httpx.Response(200, json={"ok": True})

    cc = ClientCredentials(
        "http://idp.invalid/token", "cid", SecretStr("sec"), transport=httpx.MockTransport(idp)
    )
    client = httpx.Client(auth=cc, transport=httpx.MockTransport(api))
    client.get("http://api.invalid/x")
    client.get("http://api.invalid/x")
    assert api_auth == ["Bearer t1", "Bearer t1"] and len(token_calls) == 1
    assert (
        token_calls[0]["grant_type"] == "client_credentials"
        and token_calls[0]["client_secret"] == "sec"
    )
    cc._expires_at = 0  # expired: fetched again before the request
    client.get("http://api.invalid/x")  # t2 -> 401 -> t3
    assert api_auth[-2:] == ["Bearer t2", "Bearer t3"] and len(token_calls) == 3
    assert "sec" not in repr(cc)


# ---- completion ----


def test_completion_model() -> None:
    fake = FakeServer()
    fake.chat = [
        httpx.Response(
            200,
            json={
                "id": "x",
                "model": "m",
                "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )
    ]
    llm = VLLMServer(model="m", max_retries=0, **fake.clients())
    assert llm.invoke("hello") == " world"
    assert fake.bodies[-1]["prompt"] == "hello"
    with pytest.raises(ContextWindowExceededError):
        llm.invoke("x" * 200, max_tokens=10)
    from langchain_core.prompts import ChatPromptTemplate

    chain = ChatPromptTemplate.from_messages([("human", "say {x}")]) | llm
    assert chain.invoke({"x": "hi"}) == " world"
    assert fake.bodies[-1]["prompt"] == "Human: say hi"


def test_count_tokens_of_text_with_tools_counts_the_tools() -> None:
    fake = FakeServer()
    m = model(fake)
    seen: list[dict] = []
    orig = fake.handler

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            seen.append(json.loads(request.content))
        return orig(request)

    m.http_client = httpx.Client(transport=httpx.MockTransport(spy))

    def get_weather(city: str) -> str:
        """Weather."""
        return city

    m.count_tokens("Weather?", tools=[get_weather])
    assert seen[-1]["tools"][0]["function"]["name"] == "get_weather"
    assert seen[-1]["messages"] == [{"role": "user", "content": "Weather?"}]


def test_discovery_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeServer()
    fails = {"n": 2}
    orig = fake.handler

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models" and fails["n"] > 0:
            fails["n"] -= 1
            raise httpx.ConnectError("refused", request=request)
        return orig(request)

    monkeypatch.setattr("langchain_multillm._retry.INITIAL_DELAY_S", 0.01)
    m = ChatVLLMServer(
        model="m",
        base_url=BASE,
        max_retries=2,
        http_client=httpx.Client(transport=httpx.MockTransport(flaky)),
    )
    assert m.invoke("hi").content == "hello"
    assert fails["n"] == 0


def test_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODEL_NAME", "seed-model")
    assert ChatVLLMServer(base_url=BASE).model_name == "seed-model"
    monkeypatch.setenv("VLLM_MODEL", "vllm-model")
    assert ChatVLLMServer(base_url=BASE).model_name == "vllm-model"
    monkeypatch.delenv("VLLM_MODEL")
    monkeypatch.delenv("LLM_MODEL_NAME")
    with pytest.raises((ValidationError, InvalidInputError), match="VLLM_MODEL"):
        ChatVLLMServer(base_url=BASE)


def test_health_error_on_health_route_is_down() -> None:
    fake = FakeServer()
    orig = fake.handler

    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            raise httpx.ReadTimeout("slow", request=request)
        return orig(request)

    m = ChatVLLMServer(
        model="m", base_url=BASE, http_client=httpx.Client(transport=httpx.MockTransport(broken))
    )
    h = m.health()  # no answer from the health route: the model cannot be shown to answer
    assert not h.alive and not h.ready and "/health failed" in h.detail


def test_stream_metadata_matches_invoke() -> None:
    fake = FakeServer()
    body = completion("hello")
    body["system_fingerprint"] = "fp1"
    ev = [chunk("hello"), chunk(finish="stop"), chunk(usage=body["usage"])]
    for e in ev:
        e["system_fingerprint"] = "fp1"
    fake.chat = [httpx.Response(200, json=body), httpx.Response(200, content=sse(ev))]
    m = model(fake)
    inv = m.invoke("hi")
    parts = list(m.stream("hi"))
    full = parts[0]
    for c in parts[1:]:
        full += c
    assert full.response_metadata == inv.response_metadata
    assert full.usage_metadata == inv.usage_metadata


@pytest.mark.parametrize("args", ["[0]", '"HelloGroup"', "{not json"])
def test_tool_call_with_arguments_that_are_not_an_object_is_invalid(args: str) -> None:
    fake = FakeServer()
    body = completion("")
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": args}}
    ]
    body["choices"][0]["finish_reason"] = "tool_calls"
    fake.chat = [httpx.Response(200, json=body)]
    msg = model(fake).invoke("hi")
    assert msg.tool_calls == []
    assert msg.invalid_tool_calls[0]["name"] == "f" and msg.invalid_tool_calls[0]["args"] == args


def test_stream_without_usage_is_counted_by_tokenize_sync_and_async() -> None:
    fake = FakeServer()
    fake.chat = [httpx.Response(200, content=sse([chunk("hello"), chunk(finish="stop")]))]
    m = model(fake)

    def merged(parts: list) -> Any:
        full = parts[0]
        for c in parts[1:]:
            full += c
        return full

    expected = {"input_tokens": 3 + 2 + 2, "output_tokens": 5, "total_tokens": 12}
    assert merged(list(m.stream("hi"))).usage_metadata == expected
    fake.chat = [httpx.Response(200, content=sse([chunk("hello"), chunk(finish="stop")]))]

    async def collect() -> list:
        return [c async for c in m.astream("hi")]

    assert merged(asyncio.run(collect())).usage_metadata == expected


@pytest.mark.parametrize("path", ["sync", "async-injected"])
def test_a_key_the_server_echoes_is_masked_in_the_error(path: str) -> None:
    key = "sk-echoed-secret-1234"

    def handler(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization", "")
        body = {"error": {"message": f"Incorrect API key provided: {sent}", "code": 401}}
        return httpx.Response(401, json=body)

    t = httpx.MockTransport(handler)
    llm = ChatVLLMServer(
        base_url="http://vllm.invalid/v1",
        model="m",
        api_key=key,
        context_overflow="ignore",
        max_retries=0,
        http_client=httpx.Client(transport=t),
        http_async_client=httpx.AsyncClient(transport=t),
    )
    call = (
        (lambda: llm.invoke("hi")) if path == "sync" else (lambda: asyncio.run(llm.ainvoke("hi")))
    )
    with pytest.raises(AuthenticationError) as info:
        call()
    shown = f"{info.value} {info.value!r} {info.value.body} {info.value.args}"
    assert key not in shown and "***" in str(info.value)
