"""ChatGemini against the Gemini API in an httpx.MockTransport (no sockets): the request it
sends, answers, streams, usage, safety blocks, the error mapping (429 RetryInfo honoured, 400
key/too-long, 403, 404, 5xx), the fit (countTokens only when the bound cannot decide), limits and
health from models.get, input checks, and that the key never shows; plus langchain-tests'
ChatModelUnitTests."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from langchain_multillm import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    ChatGemini,
    ContentFilteredError,
    ContextWindowExceededError,
    InvalidInputError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from langchain_multillm import errors as e

genai_errors = pytest.importorskip("google.genai.errors")

BASE = "http://gemini.invalid"
KEY = "AIzaUnitTestSecretKey123"
MODEL_PATH = "/v1beta/models/gemini-2.5-flash"
CARD = {
    "name": "models/gemini-2.5-flash",
    "version": "2.5",
    "inputTokenLimit": 1000,
    "outputTokenLimit": 200,
    "supportedGenerationMethods": ["generateContent", "countTokens"],
}
USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}


def answer(text: str = "Paris.", finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    cand: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": finish,
        "index": 0,
    }
    return {
        "candidates": [cand],
        "usageMetadata": USAGE,
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "resp-1",
        **extra,
    }


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    err: dict[str, Any] = {"code": code, "message": status and message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


class FakeGemini:
    """The Gemini API's routes the backend uses; ``replies`` are served in order first."""

    def __init__(self, replies: list[httpx.Response] | None = None) -> None:
        self.replies = list(replies or [])
        self.requests: list[httpx.Request] = []
        self.count = 7

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("x-goog-api-key") != KEY:
            return httpx.Response(403, json=google_error(403, "PERMISSION_DENIED", "no key"))
        path = request.url.path
        if request.method == "POST" and self.replies and not path.endswith(":countTokens"):
            return self.replies.pop(0)
        if request.method == "GET":
            if path != MODEL_PATH:
                return httpx.Response(404, json=google_error(404, "NOT_FOUND", "not found"))
            return httpx.Response(200, json=CARD)
        if path.endswith(":countTokens"):
            return httpx.Response(200, json={"totalTokens": self.count})
        if path.endswith(":streamGenerateContent"):
            chunks = [
                {**answer("Par"), "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "Par"}]}, "index": 0}]},
                answer("is."),
            ]  # fmt: skip
            text = "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks)
            return httpx.Response(
                200, content=text.encode(), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=answer())

    def bodies(self, suffix: str = ":generateContent") -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith(suffix)]


def make(fake: FakeGemini, **kw: Any) -> ChatGemini:
    transport = httpx.MockTransport(fake.handler)
    kw.setdefault("max_retries", 0)
    return ChatGemini(
        api_key=KEY,
        base_url=BASE,
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
        **kw,
    )


# ---- construction ----


def test_key_from_gemini_then_google_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"api_key: is required.*GEMINI_API_KEY.*GOOGLE_API_KEY"):
        ChatGemini()
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaFromGoogle")
    assert ChatGemini().api_key.get_secret_value() == "AIzaFromGoogle"  # type: ignore[union-attr]
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaFromGemini")
    assert ChatGemini().api_key.get_secret_value() == "AIzaFromGemini"  # type: ignore[union-attr]
    monkeypatch.setenv("GEMINI_BASE_URL", "http://127.0.0.1:9")
    assert ChatGemini().base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": ""}, "model"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": 0}, "top_k"),
        ({"base_url": "not a url"}, "base_url"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ChatGemini(api_key=KEY, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": " "}, "model"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"candidate_count": 2}, "candidate_count"),
    ],
)
def test_bad_call_arguments_are_refused_before_any_request(kwargs: dict, field: str) -> None:
    fake = FakeGemini()
    with pytest.raises(InvalidInputError, match=field):
        make(fake).invoke("Hi", **kwargs)
    assert fake.requests == []


def test_the_key_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeGemini([httpx.Response(500, json=google_error(500, "INTERNAL", "boom"))])
    llm = make(fake)
    for text in (
        repr(llm),
        str(llm),
        json.dumps(llm.to_json(), default=str),
        llm.model_dump_json(),
    ):
        assert KEY not in text
    assert llm.lc_secrets == {"api_key": "GEMINI_API_KEY"}
    with pytest.raises(BackendError) as info:
        llm.invoke("Hi")
    assert KEY not in str(info.value) and KEY not in repr(info.value.body)
    assert KEY not in pickle.dumps(info.value).decode("latin-1")
    llm.health()
    list(llm.stream("Hi"))
    assert caplog.records and KEY not in caplog.text  # not in logs, even at DEBUG


# ---- requests and answers ----


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


def test_request_shape() -> None:
    fake = FakeGemini()
    llm = make(
        fake,
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        max_tokens=50,
        stop=["END"],
        seed=7,
        thinking_budget=0,
        safety_settings={"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"},
    )
    llm.invoke([SystemMessage("Be brief."), HumanMessage("Capital of France?")])
    (body,) = fake.bodies()
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Capital of France?"}]}]
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
        "seed": 7,
        # google-genai sends the ThinkingConfig's own field names (proto3 JSON takes both)
        "thinkingConfig": body["generationConfig"]["thinkingConfig"],
    }
    assert body["generationConfig"]["thinkingConfig"] in (
        {"thinkingBudget": 0},
        {"thinking_budget": 0},
    )
    assert body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
    ]
    assert fake.requests[-1].url.path == MODEL_PATH + ":generateContent"


def test_answer_usage_and_metadata() -> None:
    fake = FakeGemini()
    out = make(fake).invoke("Capital of France?")
    assert out.content == "Paris."
    assert out.usage_metadata == {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}
    assert out.response_metadata["finish_reason"] == "STOP"
    assert out.response_metadata["model_name"] == "gemini-2.5-flash"
    assert out.response_metadata["model_version"] == "gemini-2.5-flash-001"


def test_stream_matches_invoke_sync_and_async() -> None:
    llm = make(FakeGemini())
    chunks = list(llm.stream("Capital of France?"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content == "Paris."
    assert full.usage_metadata == {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}
    assert full.response_metadata["finish_reason"] == "STOP"
    assert sum(1 for c in chunks if c.usage_metadata) == 1  # usage once, on the last chunk

    async def run() -> tuple[str, Any]:
        got = [c async for c in llm.astream("Capital of France?")]
        total = got[0]
        for c in got[1:]:
            total += c
        inv = await llm.ainvoke("Capital of France?")
        return total.content, (total.usage_metadata, inv.usage_metadata, inv.content)

    text, (u1, u2, content) = asyncio.run(run())
    assert text == content == "Paris." and u1 == u2


def test_stream_usage_off_leaves_usage_out_of_streams_only() -> None:
    llm = make(FakeGemini(), stream_usage=False)
    assert all(c.usage_metadata is None for c in llm.stream("Capital of France?"))
    assert llm.invoke("Capital of France?").usage_metadata is not None


def test_tools_tool_choice_and_calls_round_trip() -> None:
    call = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "GetWeather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2lnbmF0dXJl",
                        }
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": USAGE,
    }
    fake = FakeGemini([httpx.Response(200, json=call)])
    llm = make(fake).bind_tools([GetWeather], tool_choice="GetWeather")
    out = llm.invoke("Weather in Paris?")
    (tc,) = out.tool_calls
    assert tc["name"] == "GetWeather" and tc["args"] == {"city": "Paris"} and tc["id"]
    assert out.additional_kwargs["thought_signatures"] == {tc["id"]: "c2lnbmF0dXJl"}
    body = fake.bodies()[0]
    (decl,) = body["tools"][0]["functionDeclarations"]
    assert decl["name"] == "GetWeather" and decl["description"].startswith("Get the current")
    # google-genai sends a declaration's own field names (proto3 JSON takes both)
    schema = decl.get("parametersJsonSchema", decl.get("parameters_json_schema"))
    assert schema["properties"] == {"city": {"type": "string"}}
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["GetWeather"]}
    }
    # The call and its result go back as functionCall / functionResponse parts.
    llm.invoke(
        [HumanMessage("Weather in Paris?"), out, ToolMessage("sunny", tool_call_id=tc["id"])]
    )
    sent = fake.bodies()[-1]["contents"]
    assert [c["role"] for c in sent] == ["user", "model", "user"]
    assert sent[1]["parts"] == [
        {
            "functionCall": {"id": tc["id"], "name": "GetWeather", "args": {"city": "Paris"}},
            "thoughtSignature": "c2lnbmF0dXJl",
        }
    ]
    assert sent[2]["parts"] == [
        {
            "functionResponse": {
                "id": tc["id"],
                "name": "GetWeather",
                "response": {"result": "sunny"},
            }
        }
    ]
    for choice, mode in (("auto", "AUTO"), ("none", "NONE"), ("any", "ANY")):
        make(fake).bind_tools([GetWeather], tool_choice=choice).invoke("Hi")
        assert fake.bodies()[-1]["toolConfig"]["functionCallingConfig"] == {"mode": mode}


def test_structured_output_asks_for_a_json_schema() -> None:
    reply = httpx.Response(200, json=answer('{"city": "Rome"}'))
    fake = FakeGemini([reply])
    assert make(fake).with_structured_output(GetWeather).invoke("Rome?") == GetWeather(city="Rome")
    config = fake.bodies()[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"] == {"city": {"type": "string"}}


# ---- safety ----

RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
]


def test_a_safety_block_raises_with_the_ratings() -> None:
    blocked = {
        "candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": RATINGS}],
        "usageMetadata": USAGE,
    }
    fake = FakeGemini([httpx.Response(200, json=blocked)])
    with pytest.raises(ContentFilteredError) as info:
        make(fake, max_retries=2).invoke("Something dangerous")
    assert len(fake.bodies()) == 1  # not retried
    results = info.value.filter_results
    assert results["finish_reason"] == "SAFETY"
    assert results["safety_ratings"][0]["category"] == "HARM_CATEGORY_DANGEROUS_CONTENT"
    assert results["safety_ratings"][0]["blocked"] is True
    prompt_blocked = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": RATINGS},
        "usageMetadata": USAGE,
    }
    body = f"data: {json.dumps(prompt_blocked)}\r\n\r\n".encode()
    fake = FakeGemini(
        [httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})]
    )
    with pytest.raises(ContentFilteredError, match="prompt was blocked") as info:
        list(make(fake).stream("Something dangerous"))
    assert info.value.filter_results["block_reason"] == "SAFETY"
    assert info.value.filter_results["prompt_safety_ratings"][0]["probability"] == "HIGH"


def test_a_safety_finish_with_text_is_returned() -> None:
    fake = FakeGemini([httpx.Response(200, json=answer("Partial", finish="SAFETY"))])
    out = make(fake).invoke("x")
    assert out.content == "Partial" and out.response_metadata["finish_reason"] == "SAFETY"


# ---- errors ----

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, google_error(400, "INVALID_ARGUMENT", "Invalid value at 'x'"), BadRequestError),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed "
                "(1048576).",
            ),
            ContextWindowExceededError,
        ),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "API key not valid.", [KEY_INVALID]),
            AuthenticationError,
        ),
        (401, google_error(401, "UNAUTHENTICATED", "bad credentials"), AuthenticationError),
        (403, google_error(403, "PERMISSION_DENIED", "denied"), PermissionDeniedError),
        (404, google_error(404, "NOT_FOUND", "models/x is not found"), ModelNotFoundError),
        (429, google_error(429, "RESOURCE_EXHAUSTED", "quota", [RETRY_INFO]), RateLimitError),
        (500, google_error(500, "INTERNAL", "internal"), BackendError),
        (503, google_error(503, "UNAVAILABLE", "overloaded"), BackendUnavailableError),
    ],
)
def test_errors_map_into_the_tree(status: int, body: dict, error: type) -> None:
    fake = FakeGemini([httpx.Response(status, json=body)])
    with pytest.raises(error) as info:
        make(fake).invoke("Hi")
    assert type(info.value) is error
    assert info.value.status_code == status
    assert len(fake.bodies()) == 1  # google-genai's own retries are off (max_retries=0 here)
    assert body["error"]["status"] in str(info.value)
    if status == 429:
        assert info.value.retry_after == 0.05


def test_429_retry_delay_is_honoured_then_succeeds() -> None:
    quota = google_error(429, "RESOURCE_EXHAUSTED", "quota", [RETRY_INFO])
    fake = FakeGemini([httpx.Response(429, json=quota), httpx.Response(429, json=quota)])
    llm = make(fake, max_retries=2)
    assert llm.invoke("Hi").content == "Paris."
    assert len(fake.bodies()) == 3
    fake = FakeGemini([httpx.Response(429, json=quota)])
    assert "".join(str(c.content) for c in make(fake, max_retries=1).stream("Hi")) == "Paris."
    assert len(fake.bodies(":streamGenerateContent")) == 2


def test_google_retry_delay_shapes() -> None:
    assert e.google_retry_delay({"error": {"details": [RETRY_INFO]}}) == 0.05
    nested = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": {"seconds": 3}}
    assert e.google_retry_delay({"error": {"details": [nested]}}) == 3.0
    assert e.google_retry_delay({"error": {"details": [KEY_INVALID]}}) is None
    assert e.google_retry_delay("not a body") is None


def test_every_genai_error_class_is_mapped() -> None:
    defined = {
        obj
        for obj in vars(genai_errors).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and not issubclass(obj, Warning)
        and obj.__module__ == genai_errors.__name__
    }
    assert defined, "google.genai.errors defines no exception classes?"
    missing = sorted(c.__name__ for c in defined - set(e.genai_errors()))
    assert missing == [], f"add these google.genai.errors classes to GENAI_ERROR_NAMES: {missing}"


def test_transport_errors_map_by_name() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    llm = ChatGemini(
        api_key=KEY,
        base_url=BASE,
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(refuse)),
    )
    with pytest.raises(BackendUnavailableError):
        llm.invoke("Hi")
    httpx2 = pytest.importorskip("httpx2")
    err = e.from_genai_error(httpx2.ReadTimeout("slow"), backend="gemini")
    assert isinstance(err, e.BackendTimeoutError)


# ---- fit, limits, health ----


def test_limits_from_models_get_asked_once() -> None:
    fake = FakeGemini()
    llm = make(fake)
    limits = llm.get_limits()
    assert (limits.max_input_tokens, limits.max_output_tokens) == (1000, 200)
    llm.invoke("Hi")
    llm.invoke("Hi")
    assert sum(r.method == "GET" for r in fake.requests) == 1
    assert llm.profile is not None and llm.profile["max_input_tokens"] == 1000


def test_count_tokens_only_when_the_bound_cannot_decide() -> None:
    fake = FakeGemini()
    llm = make(fake)
    llm.invoke("Hi")  # the bound (bytes + allowance) fits 1000 easily: no countTokens
    assert fake.bodies(":countTokens") == []
    near = "word " * 180  # 900 bytes: the bound says maybe over 1000, the exact count says 7
    report = llm.check_fit(near)
    assert report.fits and report.exact and report.prompt_tokens == 7
    assert len(fake.bodies(":countTokens")) == 1
    fake.count = 1001
    with pytest.raises(ContextWindowExceededError) as info:
        llm.invoke([SystemMessage("Be brief."), HumanMessage(near)])
    assert info.value.prompt_tokens == 1001 and info.value.limit == 1000
    counted = fake.bodies(":countTokens")[-1]["generateContentRequest"]
    assert counted["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert counted["model"] == "models/gemini-2.5-flash"
    assert len(fake.bodies()) == 1  # the overflowing call was never sent
    fake.count = 7
    with pytest.raises(ContextWindowExceededError, match="max_output_tokens"):
        llm.invoke("Hi", max_tokens=201)


def test_count_tokens_sends_tools_inside_generate_content_request() -> None:
    fake = FakeGemini()
    assert make(fake).count_tokens("What is the weather?", tools=[GetWeather]) == 7
    (body,) = fake.bodies(":countTokens")
    assert body["generateContentRequest"]["tools"][0]["functionDeclarations"][0]["name"] == (
        "GetWeather"
    )


def test_health_is_models_get() -> None:
    fake = FakeGemini()
    report = make(fake).health()
    assert report.alive and report.ready and report.context_window == 1000
    assert [r.method for r in fake.requests] == ["GET"]
    missing = make(fake, model="gemini-nope").health()
    assert missing.alive and not missing.ready and "not served" in missing.detail
    refused = ChatGemini(
        api_key="AIzaWrong",
        base_url=BASE,
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
    )
    report = asyncio.run(refused.ahealth())
    assert report.alive and not report.ready and "refused the key" in report.detail
    down = ChatGemini(api_key=KEY, base_url="http://127.0.0.1:9", health_timeout=2).health()
    assert not down.alive and not down.ready


def test_unknown_parameters_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="frobnicate"):
        make(FakeGemini()).invoke("Hi", frobnicate=1)


def test_ai_message_without_tool_call_name_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="name"):
        make(FakeGemini()).invoke(
            [HumanMessage("Hi"), AIMessage("x"), ToolMessage("r", tool_call_id="zz")]
        )


class TestChatGeminiUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatGemini]:
        return ChatGemini

    @property
    def chat_model_params(self) -> dict:
        return {"model": "gemini-2.5-flash", "api_key": KEY, "base_url": "http://127.0.0.1:9"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"GEMINI_API_KEY": "env-key", "GEMINI_BASE_URL": "http://127.0.0.1:9"},
            {"model": "gemini-2.5-flash"},
            {"api_key": "env-key", "base_url": "http://127.0.0.1:9"},
        )
