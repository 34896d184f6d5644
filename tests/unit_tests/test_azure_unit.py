"""ChatAzureOpenAI on an httpx.MockTransport: settings, secrets, the openai error mapping,
content filtering, streams that open with a chunk without choices, tiktoken counts."""

from __future__ import annotations

import inspect
import json
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_multillm import (
    AuthenticationError,
    ChatAzureOpenAI,
    ContentFilteredError,
    ContextWindowExceededError,
    InvalidInputError,
    ModelNotFoundError,
    RateLimitError,
)
from langchain_multillm import errors as e
from langchain_multillm.backends.azure import (
    count_chat_tokens,
    model_family,
    takes_stream_options,
)

pytestmark = pytest.mark.usefixtures("tiktoken_ready")

ENDPOINT = "http://azure.invalid"
KEY = "azure-very-secret-key"
SAFE = {"filtered": False, "severity": "safe"}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": {"hate": SAFE}}]
USAGE_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-4o-2024-08-06", "choices": [],
               "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}}  # fmt: skip


def completion(content: str | None, finish: str = "stop", blocked: bool = False) -> dict:
    results = {
        "hate": SAFE,
        "violence": {"filtered": blocked, "severity": "high" if blocked else "safe"},
    }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "prompt_filter_results": PROMPT_FILTERS,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "content_filter_results": results,
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
    }


def sse(events: list[dict]) -> str:
    return "".join(f"data: {json.dumps(ev)}\n\n" for ev in events) + "data: [DONE]\n\n"


def stream_events(text: list[str], finish: str = "stop") -> list[dict]:
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
             "prompt_filter_results": PROMPT_FILTERS}  # fmt: skip
    base = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
    }
    out = [first]
    for piece in text:
        out.append(
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        )
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish,
                "content_filter_results": {"hate": SAFE}}]})  # fmt: skip
    return out


class Fake:
    def __init__(self, answer: Any = None, status: int = 200, stream: list[dict] | None = None,
                 headers: dict | None = None) -> None:  # fmt: skip
        self.answer = answer if answer is not None else completion("Hello there")
        self.status = status
        self.stream = stream
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("api-key") != KEY:
            return httpx.Response(401, json={"error": {"code": "401", "message": "Access denied"}})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        body = json.loads(request.content)
        if body.get("stream"):
            events = list(self.stream or stream_events(["Hel", "lo"]))
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(USAGE_CHUNK)  # last, with no choices, as Azure sends it
            return httpx.Response(200, text=sse(events),
                                  headers={"content-type": "text/event-stream"})  # fmt: skip
        return httpx.Response(self.status, json=self.answer, headers=self.headers)


def make(fake: Fake, **kw: Any) -> ChatAzureOpenAI:
    kw.setdefault("api_key", KEY)
    return ChatAzureOpenAI(
        azure_endpoint=ENDPOINT,
        azure_deployment="gpt-4o",
        api_version=kw.pop("api_version", "2024-10-21"),
        http_client=httpx.Client(transport=httpx.MockTransport(fake.handler)),
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
        max_retries=kw.pop("max_retries", 0),
        **kw,
    )


# ------------------------------------------------------------------ settings and secrets


@pytest.mark.parametrize(
    ("missing", "env"),
    [
        ("azure_endpoint", "AZURE_OPENAI_ENDPOINT"),
        ("azure_deployment", "AZURE_OPENAI_DEPLOYMENT"),
        ("api_version", "OPENAI_API_VERSION"),
        ("api_key", "AZURE_OPENAI_API_KEY"),
    ],
)
def test_missing_settings_name_field_and_variable(
    missing: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "OPENAI_API_VERSION",
                "AZURE_OPENAI_API_KEY"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    kw = {"azure_endpoint": ENDPOINT, "azure_deployment": "gpt-4o", "api_version": "2024-10-21",
          "api_key": KEY}  # fmt: skip
    del kw[missing]
    with pytest.raises(ValueError, match=f"{missing}.*{env}"):
        ChatAzureOpenAI(**kw)


def test_settings_from_environment_and_token_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    llm = ChatAzureOpenAI(azure_deployment="gpt-4o-mini", azure_ad_token_provider=lambda: "tok")
    assert llm.model_name == "gpt-4o-mini" and llm.azure_endpoint == ENDPOINT
    assert llm.get_limits().context_window == 128_000


def test_bearer_token_from_provider_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion("hi"))

    llm = ChatAzureOpenAI(azure_endpoint=ENDPOINT, azure_deployment="gpt-4o",
                          api_version="2024-10-21", azure_ad_token_provider=lambda: "entra-tok",
                          http_client=httpx.Client(transport=httpx.MockTransport(handler)))  # fmt: skip
    assert llm.invoke("x").content == "hi"
    assert seen[0].headers["authorization"] == "Bearer entra-tok"
    assert "api-key" not in seen[0].headers


def test_secrets_never_in_repr_or_dumps() -> None:
    llm = make(Fake(), azure_ad_token_provider=lambda: "tok")
    for text in (repr(llm), str(llm), json.dumps(llm.model_dump(mode="json"), default=str)):
        assert KEY not in text
    from langchain_core.load import dumps

    assert KEY not in dumps(llm)
    assert llm.lc_secrets == {"api_key": "AZURE_OPENAI_API_KEY"}


def test_request_shape_path_query_header_and_stream_options() -> None:
    fake = Fake()
    llm = make(fake, max_tokens=5)
    list(llm.stream("hi"))
    req = fake.requests[-1]
    assert req.url.path == "/openai/deployments/gpt-4o/chat/completions"
    assert req.url.params["api-version"] == "2024-10-21"
    body = json.loads(req.content)
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 5
    llm.invoke("hi")
    assert "stream_options" not in json.loads(fake.requests[-1].content)  # streams only
    list(make(fake, stream_usage=False).stream("hi"))
    assert "stream_options" not in json.loads(fake.requests[-1].content)
    list(make(fake, api_version="2024-06-01").stream("hi"))  # this version refuses it
    assert "stream_options" not in json.loads(fake.requests[-1].content)


@pytest.mark.parametrize(
    ("version", "takes"),
    [
        ("2024-02-01", False),
        ("2024-06-01", False),
        ("2024-10-21", True),
        ("2025-03-01", True),
        ("2024-05-01-preview", False),
        ("2024-07-01-preview", False),
        ("2024-08-01-preview", True),
        ("2025-04-01-preview", True),
        ("v1", True),
        ("preview", True),
        ("not-a-version", False),
    ],
)
def test_api_versions_that_take_stream_options(version: str, takes: bool) -> None:
    assert takes_stream_options(version) is takes


def test_reasoning_models_get_max_completion_tokens() -> None:
    fake = Fake()
    make(fake, model="o3-mini", max_tokens=7).invoke("hi")
    body = json.loads(fake.requests[-1].content)
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


@pytest.mark.parametrize("knob", [{"temperature": 0.5}, {"top_p": 0.9}, {"stop": ["x"]}])
def test_reasoning_models_refuse_sampling_knobs_before_sending(knob: dict) -> None:
    fake = Fake()
    llm = make(fake, model="o3-mini")
    with pytest.raises(InvalidInputError) as info:
        llm.invoke("hi", **knob)
    assert info.value.field == next(iter(knob)) and fake.requests == []


# ------------------------------------------------------------------ errors


def test_every_openai_exception_is_mapped() -> None:
    classes = [
        c for name, c in inspect.getmembers(openai, inspect.isclass)
        if issubclass(c, BaseException) and not name.startswith("_")
    ]  # fmt: skip
    table = e.openai_errors()
    assert [c.__name__ for c in classes if c not in table] == []


def _status_error(cls: type, status: int, body: Any) -> Exception:
    request = httpx.Request("POST", "http://x.invalid")
    response = httpx.Response(status, json={"error": body}, request=request)
    return cls(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("cls", "status", "expected"),
    [
        (openai.BadRequestError, 400, e.BadRequestError),
        (openai.AuthenticationError, 401, e.AuthenticationError),
        (openai.PermissionDeniedError, 403, e.PermissionDeniedError),
        (openai.NotFoundError, 404, e.ModelNotFoundError),
        (openai.RateLimitError, 429, e.RateLimitError),
        (openai.InternalServerError, 500, e.BackendError),
        (openai.InternalServerError, 503, e.BackendUnavailableError),
    ],
)
def test_status_errors_map_by_status(cls: type, status: int, expected: type) -> None:
    mapped = e.from_openai_error(_status_error(cls, status, {"message": "nope", "code": "x"}))
    assert type(mapped) is expected and mapped.status_code == status and "nope" in str(mapped)


def test_transport_errors_map() -> None:
    request = httpx.Request("POST", "http://x.invalid")
    assert isinstance(e.from_openai_error(openai.APITimeoutError(request=request)),
                      e.BackendTimeoutError)  # fmt: skip
    assert isinstance(e.from_openai_error(openai.APIConnectionError(request=request)),
                      e.BackendUnavailableError)  # fmt: skip


def test_api_errors_through_the_model() -> None:
    with pytest.raises(AuthenticationError):
        make(Fake(), api_key="wrong").invoke("hi")
    not_found = {"error": {"code": "DeploymentNotFound", "message": "The API deployment ..."}}
    with pytest.raises(ModelNotFoundError, match="deployment"):
        make(Fake(answer=not_found, status=404)).invoke("hi")
    limited = {"error": {"code": "429", "message": "Rate limit is exceeded."}}
    fake = Fake(answer=limited, status=429, headers={"retry-after": "0"})
    with pytest.raises(RateLimitError) as info:
        make(fake, max_retries=1).invoke("hi")
    assert info.value.retry_after == 0 and len(fake.requests) == 2  # retried once, in one place
    too_long = {"error": {"code": "context_length_exceeded", "message":
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130000 tokens."}}  # fmt: skip
    with pytest.raises(ContextWindowExceededError):
        make(Fake(answer=too_long, status=400)).invoke("hi", context_overflow="ignore")


# ------------------------------------------------------------------ content filter


def test_filter_results_in_response_metadata() -> None:
    msg = make(Fake()).invoke("hi")
    assert msg.response_metadata["prompt_filter_results"] == PROMPT_FILTERS
    assert msg.response_metadata["content_filter_results"]["hate"] == SAFE


def test_blocked_answer_raises_with_results() -> None:
    fake = Fake(answer=completion(None, finish="content_filter", blocked=True))
    with pytest.raises(ContentFilteredError) as info:
        make(fake).invoke("hi")
    assert info.value.filter_results["content_filter_results"]["violence"]["filtered"] is True
    assert not info.value.is_retryable


def test_partly_blocked_answer_is_kept_and_says_so() -> None:
    msg = make(Fake(answer=completion("Part of it", finish="content_filter"))).invoke("hi")
    assert msg.content == "Part of it"
    assert msg.response_metadata["finish_reason"] == "content_filter"


def test_prompt_filtered_400_raises_content_filtered() -> None:
    body = {"error": {"code": "content_filter", "message": "The response was filtered",
            "param": "prompt", "inner_error": {"code": "ResponsibleAIPolicyViolation",
            "content_filter_results": {"violence": {"filtered": True, "severity": "high"}}}}}  # fmt: skip
    with pytest.raises(ContentFilteredError) as info:
        make(Fake(answer=body, status=400)).invoke("hi")
    assert info.value.filter_results["prompt"]["violence"]["filtered"] is True
    assert info.value.status_code == 400


def test_stream_survives_first_chunk_without_choices() -> None:
    llm = make(Fake())
    chunks = list(llm.stream("hi"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == "Hello"
    assert total.response_metadata["prompt_filter_results"] == PROMPT_FILTERS
    assert total.response_metadata["finish_reason"] == "stop"
    assert total.usage_metadata == {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}
    # An API version without stream_options sends no usage: counted exactly with tiktoken.
    old = make(Fake(), api_version="2024-06-01")
    chunks = list(old.stream("hi"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    prompt = old.count_tokens([HumanMessage("hi")])
    assert total.usage_metadata == {"input_tokens": prompt, "output_tokens": 1,
                                    "total_tokens": prompt + 1}  # fmt: skip


def test_blocked_stream_raises() -> None:
    fake = Fake(stream=stream_events([], finish="content_filter"))
    with pytest.raises(ContentFilteredError):
        list(make(fake).stream("hi"))


async def test_async_parity() -> None:
    llm = make(Fake())
    sync, asy = llm.invoke("hi"), await llm.ainvoke("hi")
    assert sync.content == asy.content and sync.response_metadata == asy.response_metadata
    chunks = [c async for c in llm.astream("hi")]
    assert "".join(str(c.content) for c in chunks) == "Hello"
    with pytest.raises(ContentFilteredError):
        await make(Fake(answer=completion(None, finish="content_filter"))).ainvoke("hi")


# ------------------------------------------------------------------ limits and counts


def test_family_table() -> None:
    assert model_family("gpt-4o-mini").encoding == "o200k_base"  # type: ignore[union-attr]
    assert model_family("gpt-4o").context_window == 128_000  # type: ignore[union-attr]
    assert model_family("gpt-35-turbo").encoding == "cl100k_base"  # type: ignore[union-attr]
    assert model_family("gpt-4.1-mini").context_window == 1_047_576  # type: ignore[union-attr]
    assert model_family("o4-mini").reasoning  # type: ignore[union-attr]
    assert model_family("my-custom-thing") is None
    llm = make(Fake(), model="unknown-model", context_window=4096)
    assert llm.get_limits().context_window == 4096


# OpenAI's cookbook ("How to count tokens with tiktoken") gives these prompt_tokens for its
# example conversation, as the API reported them: 129 for gpt-3.5-turbo / gpt-4 (cl100k_base),
# 124 for gpt-4o (o200k_base).
COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(("encoding", "expected"), [("cl100k_base", 129), ("o200k_base", 124)])
def test_counts_match_openai_documented_counts(encoding: str, expected: int) -> None:
    assert count_chat_tokens(COOKBOOK, encoding) == (expected, True)


def test_count_tokens_exact_and_fit_reports_exact() -> None:
    llm = make(Fake())
    msgs = [SystemMessage("Be brief."), HumanMessage("hello")]
    n = llm.count_tokens(msgs)
    assert (
        n
        == count_chat_tokens(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
            "o200k_base",
        )[0]
    )
    assert llm.get_num_tokens_from_messages(msgs) == n
    report = llm.check_fit(msgs, max_tokens=10)
    assert report.fits and report.context_window == 128_000
    big = llm.check_fit(msgs, max_tokens=200_000)
    assert not big.fits  # over max_output_tokens
    tight = make(Fake(), context_window=n + 5)
    over = tight.check_fit(msgs, max_tokens=10)
    assert not over.fits and over.exact and over.prompt_tokens == n
    with pytest.raises(ContextWindowExceededError):
        tight.invoke(msgs, max_tokens=10)


def test_tools_are_counted_conservatively() -> None:
    from pydantic import BaseModel

    class GetWeather(BaseModel):
        """Weather in a city."""

        city: str

    llm = make(Fake())
    plain = llm.count_tokens([HumanMessage("weather in Paris?")])
    with_tools = llm.count_tokens([HumanMessage("weather in Paris?")], tools=[GetWeather])
    assert with_tools > plain + 10
    report = llm.check_fit([HumanMessage("weather in Paris?")], tools=[GetWeather])
    assert report.fits and not report.exact
    calls = [
        AIMessage("", tool_calls=[{"name": "GetWeather", "args": {"city": "Paris"}, "id": "c1"}])
    ]
    assert llm.count_tokens([HumanMessage("x"), *calls]) > llm.count_tokens([HumanMessage("x")])


# ------------------------------------------------------------------ health


def test_health_alive_not_ready_without_deep_and_ready_with_it() -> None:
    fake = Fake()
    llm = make(fake)
    shallow = llm.health()
    assert shallow.alive and not shallow.ready and "deep=True" in shallow.detail
    assert [r.url.path for r in fake.requests] == ["/openai/models"]
    deep = llm.health(deep=True)
    assert deep.alive and deep.ready and "billed" in deep.detail
    body = json.loads(fake.requests[-1].content)
    assert body["max_tokens"] == 1


def test_health_never_raises() -> None:
    bad_key = make(Fake(), api_key="wrong").health(deep=True)
    assert bad_key.alive and not bad_key.ready and "credentials" in bad_key.detail
    gone = make(Fake(answer={"error": {"code": "DeploymentNotFound", "message": "no"}}, status=404))
    report = gone.health(deep=True)
    assert report.alive and not report.ready and "gpt-4o" in report.detail
    down = ChatAzureOpenAI(azure_endpoint="http://127.0.0.1:9", azure_deployment="gpt-4o",
                           api_version="2024-10-21", api_key=KEY, health_timeout=1)  # fmt: skip
    assert not down.health().alive


async def test_async_health() -> None:
    llm = make(Fake())
    assert (await llm.ahealth(deep=True)).ready
    assert not (await llm.ahealth()).ready
