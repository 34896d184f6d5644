"""ChatGemini against the Gemini protocol fixture: invoke, stream, ainvoke and astream agree
(content, usage, finish_reason, model_name); the fit (the cheap bound first, countTokens when
it cannot decide, matching usage exactly); limits and health from models.get; Gemini's errors
in the tree (429 retried after RetryInfo's delay, SAFETY blocks, the key, the input limit);
tools and structured output; every exchange validated by the fixture."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from langchain_multillm import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ChatGemini,
    ContentFilteredError,
    ContextWindowExceededError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitError,
    load_chat_model,
)
from tests import peers
from tests.integration_tests.parity import assert_four_ways_agree, merge

pytestmark = [pytest.mark.gemini, pytest.mark.timeout(300)]

Q = [("system", "Answer in one short sentence."), ("human", "What is the capital of France?")]


@pytest.fixture
def control(gemini_server_url: str) -> Iterator[httpx.Client]:
    """The fixture's test-only routes; state reset around each test, violations checked."""
    with httpx.Client(base_url=gemini_server_url, timeout=60) as c:
        c.post("/__fixture__/reset")
        yield c
        assert c.get("/__fixture__/violations").json() == []
        c.post("/__fixture__/reset")


def sent(control: httpx.Client, suffix: str = "") -> list[dict[str, Any]]:
    return [r for r in control.get("/__fixture__/requests").json() if r["path"].endswith(suffix)]


def make(url: str, **kw: Any) -> ChatGemini:
    kw.setdefault("api_key", peers.GEMINI_FIXTURE_KEY)
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return ChatGemini(base_url=url, **kw)


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-2.5-flash-lite"])
def test_four_ways_agree(gemini_server_url: str, control: httpx.Client, model: str) -> None:
    chat = make(gemini_server_url, model=model)
    out = assert_four_ways_agree(chat, Q)
    assert out.response_metadata["model_name"] == model
    assert out.response_metadata["finish_reason"] in ("STOP", "MAX_TOKENS")
    streams = sent(control, ":streamGenerateContent")
    assert len(streams) == 2 and all(r["query"] == "alt=sse" for r in streams)
    body = sent(control, ":generateContent")[0]["json"]
    assert body["systemInstruction"] == {"parts": [{"text": "Answer in one short sentence."}]}


def test_fit_bound_first_then_count_tokens_exactly(
    gemini_server_url: str, control: httpx.Client
) -> None:
    chat = make(gemini_server_url)
    limits = chat.get_limits()
    assert (limits.max_input_tokens, limits.max_output_tokens) == (1536, 512)
    assert chat.profile and chat.profile["max_input_tokens"] == 1536
    assert chat.check_fit(Q).exact is False  # the bound decides: no countTokens
    assert sent(control, ":countTokens") == []
    exact = chat.count_tokens(Q)
    assert exact == chat.invoke(Q).usage_metadata["input_tokens"]  # type: ignore[index]
    near = [SystemMessage("Be brief."), HumanMessage("Tell me about the sea. " * 60)]  # ~1.4 kB
    report = chat.check_fit(near, max_tokens=24)
    assert report.exact and report.fits  # the bound said maybe not; the count decided
    assert report.prompt_tokens == chat.invoke(near).usage_metadata["input_tokens"]  # type: ignore[index]
    (counted,) = [
        r for r in sent(control, ":countTokens") if "generateContentRequest" in r["json"]
    ][-1:]
    assert counted["json"]["generateContentRequest"]["systemInstruction"]
    over = [HumanMessage("Tell me about the sea. " * 400)]
    before = len(sent(control, ":generateContent"))
    with pytest.raises(ContextWindowExceededError) as info:
        chat.invoke(over)
    assert info.value.limit == 1536 and info.value.fit and info.value.fit.exact
    assert len(sent(control, ":generateContent")) == before  # refused before sending
    with pytest.raises(ContextWindowExceededError, match="max_output_tokens"):
        chat.invoke(Q, max_tokens=513)


def test_the_servers_input_limit_is_a_context_error(
    gemini_server_url: str, control: httpx.Client
) -> None:
    chat = make(gemini_server_url, context_overflow="ignore")
    with pytest.raises(ContextWindowExceededError, match="input token count") as info:
        chat.invoke([HumanMessage("Tell me about the sea. " * 400)])
    assert info.value.status_code == 400


def test_limits_are_asked_once(gemini_server_url: str, control: httpx.Client) -> None:
    chat = make(gemini_server_url)
    chat.invoke(Q)
    asyncio.run(chat.ainvoke(Q))
    list(chat.stream(Q))
    assert len([r for r in sent(control) if r["method"] == "GET"]) == 1


def test_health(gemini_server_url: str, control: httpx.Client) -> None:
    report = make(gemini_server_url).health()
    assert report.alive and report.ready and report.context_window == 1536
    report = asyncio.run(make(gemini_server_url).ahealth())
    assert report.alive and report.ready
    missing = make(gemini_server_url, model="gemini-9").health()
    assert missing.alive and not missing.ready
    refused = make(gemini_server_url, api_key="not-a-google-key").health()
    assert refused.alive and not refused.ready and "refused the key" in refused.detail
    assert all(r["method"] == "GET" for r in sent(control))  # never a generation
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 503})
    overloaded = make(gemini_server_url).health()  # answers it cannot serve: down
    assert not overloaded.alive and not overloaded.ready and "503" in overloaded.detail
    down = ChatGemini(api_key="AIzaX", base_url=f"http://127.0.0.1:{peers.free_port()}").health()
    assert not down.alive


def test_rate_limit_is_retried_after_retry_info(
    gemini_server_url: str, control: httpx.Client
) -> None:
    chat = make(gemini_server_url, max_retries=2)
    chat.get_limits()  # asked once, before the failures
    control.post("/__fixture__/state", json={"fail_next": 1, "retry_delay_s": 1.5})
    started = time.monotonic()
    assert chat.invoke(Q).content
    assert time.monotonic() - started >= 1.5  # RetryInfo's delay, honoured
    assert len(sent(control, ":generateContent")) == 2
    control.post("/__fixture__/state", json={"fail_next": 1, "retry_delay_s": 0.2})
    assert merge(list(chat.stream(Q))).content  # retried before the first chunk
    assert len(sent(control, ":streamGenerateContent")) == 2
    control.post("/__fixture__/state", json={"fail_next": 1, "retry_delay_s": 7})
    with pytest.raises(RateLimitError) as info:
        make(gemini_server_url, max_retries=0, context_overflow="ignore").invoke(Q)
    assert info.value.retry_after == 7 and info.value.status_code == 429


@pytest.mark.parametrize(("status", "error"), [(500, BackendError), (503, BackendUnavailableError)])
def test_server_errors(
    gemini_server_url: str, control: httpx.Client, status: int, error: type[Exception]
) -> None:
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": status})
    with pytest.raises(error) as info:
        make(gemini_server_url, max_retries=0, context_overflow="ignore").invoke(Q)
    assert type(info.value) is error and info.value.status_code == status  # type: ignore[attr-defined]


def test_key_and_model_errors(gemini_server_url: str, control: httpx.Client) -> None:
    with pytest.raises(AuthenticationError, match="API key not valid"):
        make(gemini_server_url, api_key="sk-wrong", context_overflow="ignore").invoke(Q)
    with pytest.raises(ModelNotFoundError):
        make(gemini_server_url, model="gemini-9", context_overflow="ignore").invoke(Q)
    with pytest.raises(PermissionDeniedError):
        make(
            gemini_server_url,
            api_key="AIzaX",
            default_headers={"x-goog-api-key": ""},
            context_overflow="ignore",
        ).invoke(Q)


def test_safety_blocks(gemini_server_url: str, control: httpx.Client) -> None:
    chat = make(gemini_server_url, max_retries=2)
    control.post("/__fixture__/state", json={"block_next": 1})
    with pytest.raises(ContentFilteredError) as info:
        chat.invoke(Q)
    assert info.value.filter_results["finish_reason"] == "SAFETY"
    assert any(r.get("blocked") for r in info.value.filter_results["safety_ratings"])
    assert len(sent(control, ":generateContent")) == 1  # not retried
    control.post("/__fixture__/state", json={"block_next": 1, "block_mode": "prompt"})
    with pytest.raises(ContentFilteredError, match="prompt was blocked") as info:
        list(chat.stream(Q))
    assert info.value.filter_results["block_reason"] == "SAFETY"

    async def astream() -> None:
        [c async for c in chat.astream(Q)]

    control.post("/__fixture__/state", json={"block_next": 1})
    with pytest.raises(ContentFilteredError):
        asyncio.run(astream())


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


def test_tools_and_structured_output(gemini_server_url: str, control: httpx.Client) -> None:
    chat = make(gemini_server_url, max_tokens=40)
    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather")
    first = bound.invoke("What is the weather in Paris?")
    (call,) = first.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)
    streamed = merge(list(bound.stream("What is the weather in Paris?")))
    assert streamed.tool_calls[0]["args"] == call["args"]
    follow = chat.bind_tools([GetWeather]).invoke(
        [
            HumanMessage("What is the weather in Paris?"),
            first,
            ToolMessage("sunny, 24 C", tool_call_id=call["id"]),
        ]
    )
    assert follow.response_metadata["finish_reason"]
    contents = sent(control, ":generateContent")[-1]["json"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    response = contents[2]["parts"][0].get("functionResponse") or contents[2]["parts"][0].get(
        "function_response"
    )
    assert response["name"] == "GetWeather"
    assert response["response"] == {"result": "sunny, 24 C"}
    # A forced call parsed into the schema; the city it names is the tiny model's.
    out = chat.with_structured_output(GetWeather).invoke("Weather in Rome?")
    assert isinstance(out, GetWeather)


def test_load_chat_model(gemini_server_url: str, control: httpx.Client) -> None:
    chat = load_chat_model(
        "gemini:gemini-2.5-flash-lite", base_url=gemini_server_url, api_key=peers.GEMINI_FIXTURE_KEY
    )
    assert isinstance(chat, ChatGemini) and chat.model_name == "gemini-2.5-flash-lite"
    assert chat.health().ready
