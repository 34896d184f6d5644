"""ChatDeepSeek against the DeepSeek protocol fixture: invoke and stream agree, the reasoning is
kept and never sent back, usage details, DeepSeek's errors in the error tree (402 not retried,
429/503 retried), the conservative count, health; every exchange validated against the OpenAI
spec plus DeepSeek's additions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage, convert_to_messages
from pydantic import BaseModel, Field

from langchain_multillm import (
    BackendUnavailableError,
    ChatDeepSeek,
    ContextWindowExceededError,
    PermissionDeniedError,
    RateLimitError,
)
from tests import peers
from tests.integration_tests.parity import assert_four_ways_agree, merge

pytestmark = [pytest.mark.deepseek, pytest.mark.timeout(300)]

KEY = "sk-fixture"
Q = [("system", "Answer in one short sentence."), ("human", "What is the capital of France?")]
LONG_SYSTEM = "You are a weather assistant. " * 20


@pytest.fixture
def control(deepseek_server_url: str) -> Iterator[httpx.Client]:
    """The fixture's test-only routes; state reset around each test, violations checked."""
    with httpx.Client(base_url=deepseek_server_url, timeout=60) as c:
        c.post("/__fixture__/reset")
        yield c
        assert c.get("/__fixture__/violations").json() == []  # every response met the spec
        c.post("/__fixture__/reset")


def sent(control: httpx.Client, path: str = "/chat/completions") -> list[dict[str, Any]]:
    return [r["json"] for r in control.get("/__fixture__/requests").json() if r["path"] == path]


def make(url: str, **kw: Any) -> ChatDeepSeek:
    kw.setdefault("api_key", KEY)
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return ChatDeepSeek(base_url=url, **kw)


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
def test_four_ways_agree(deepseek_server_url: str, control: httpx.Client, model: str) -> None:
    chat = make(deepseek_server_url, model=model)
    out = assert_four_ways_agree(chat, Q)
    assert out.response_metadata["model_name"] == model
    if model == "deepseek-reasoner":
        reasoning = out.additional_kwargs["reasoning_content"]
        streamed = merge(list(chat.stream(Q)))
        assert streamed.additional_kwargs["reasoning_content"] == reasoning

        async def collect() -> str:
            chunks = [c async for c in chat.astream(Q)]
            return merge(chunks).additional_kwargs["reasoning_content"]

        assert asyncio.run(collect()) == reasoning
    else:
        assert "reasoning_content" not in out.additional_kwargs
    # Each request asked for usage in the stream, as DeepSeek documents.
    streams = [b for b in sent(control) if b.get("stream")]
    assert streams and all(b["stream_options"] == {"include_usage": True} for b in streams)


def test_reasoning_is_kept_and_not_sent_back(
    deepseek_server_url: str, control: httpx.Client
) -> None:
    chat = make(deepseek_server_url, model="deepseek-reasoner", max_tokens=12)
    first = chat.invoke("Is 7 a prime number?")
    assert first.additional_kwargs["reasoning_content"]
    # The fixture answers 400 if reasoning_content comes back; ChatDeepSeek drops it.
    second = chat.invoke([HumanMessage("Is 7 a prime number?"), first, HumanMessage("And 9?")])
    assert second.content and second.additional_kwargs["reasoning_content"]
    body = sent(control)[-1]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1] == {"role": "assistant", "content": first.content}
    streamed = merge(list(chat.stream([HumanMessage("Hi"), first, HumanMessage("Bye")])))
    assert streamed.additional_kwargs["reasoning_content"]
    assert all("reasoning_content" not in m for b in sent(control) for m in b["messages"])


def test_usage_details(deepseek_server_url: str, control: httpx.Client) -> None:
    chat = make(deepseek_server_url, model="deepseek-reasoner", max_tokens=8)
    messages = [SystemMessage(LONG_SYSTEM), HumanMessage("Is it raining in Paris?")]
    first = chat.invoke(messages)
    usage = first.usage_metadata
    assert usage is not None
    assert usage["input_token_details"] == {"cache_read": 0}
    reasoning = usage["output_token_details"]["reasoning"]
    assert 0 < reasoning < usage["output_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # The same long system prompt again: DeepSeek's context cache hits in 64-token units.
    again = merge(list(chat.stream([messages[0], HumanMessage("Is it sunny in Rome?")])))
    assert again.usage_metadata is not None
    hit = again.usage_metadata["input_token_details"]["cache_read"]
    assert hit > 0 and hit % 64 == 0 and hit < again.usage_metadata["input_tokens"]
    assert again.usage_metadata["output_token_details"]["reasoning"] > 0


def test_insufficient_balance_is_permission_denied_not_retried(
    deepseek_server_url: str, control: httpx.Client
) -> None:
    control.post("/__fixture__/state", json={"fail_next": 3, "fail_status": 402})
    chat = make(deepseek_server_url, max_retries=2)
    with pytest.raises(PermissionDeniedError, match="Insufficient Balance") as info:
        chat.invoke(Q)
    assert info.value.status_code == 402
    assert len(sent(control)) == 1
    with pytest.raises(PermissionDeniedError):
        list(chat.stream(Q))
    assert len(sent(control)) == 2


@pytest.mark.parametrize(
    ("status", "error"), [(429, RateLimitError), (503, BackendUnavailableError)]
)
def test_rate_limit_and_overload_are_retried(
    deepseek_server_url: str, control: httpx.Client, status: int, error: type[Exception]
) -> None:
    state = {"fail_next": 1, "fail_status": status, "retry_after_s": 0}
    control.post("/__fixture__/state", json=state)
    chat = make(deepseek_server_url, max_retries=2)
    assert chat.invoke(Q).content
    assert len(sent(control)) == 2
    control.post("/__fixture__/state", json=state)
    assert merge(list(chat.stream(Q))).content  # retried before the first token
    assert len(sent(control)) == 4
    control.post("/__fixture__/state", json={**state, "fail_next": 2})
    with pytest.raises(error) as info:
        chat.model_copy(update={"max_retries": 0}).invoke(Q)
    assert info.value.status_code == status


def test_a_prompt_over_the_servers_window_is_a_context_error(
    deepseek_server_url: str, control: httpx.Client
) -> None:
    chat = make(deepseek_server_url)
    long = [HumanMessage("Tell me about the sea. " * 400)]  # ~2400 tokens: over the fixture's 2048
    report = chat.check_fit(long, max_tokens=24)
    assert report.fits  # DeepSeek's table says 128k: only the server can refuse it here
    with pytest.raises(ContextWindowExceededError, match="maximum context length is 2048"):
        chat.invoke(long)


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


@pytest.mark.parametrize(
    "prompt",
    [
        Q,
        [("human", "Hi")],
        [("human", "Ünïcödé, 日本語のテキスト, emojis 🙂🙂🙂 and symbols ∑∫√ " * 5)],
        [("system", LONG_SYSTEM), ("human", "Is it raining?"), ("ai", "No."), ("human", "Sure?")],
    ],
)
def test_fit_report_is_not_exact_and_never_under_the_servers_count(
    deepseek_server_url: str, control: httpx.Client, prompt: Any
) -> None:
    chat = make(deepseek_server_url, max_tokens=1)
    prompt = convert_to_messages(prompt)  # check_fit takes BaseMessages, not tuples
    report = chat.check_fit(prompt, max_tokens=1)
    assert report.fits and report.exact is False and report.context_window == 128_000
    real = chat.invoke(prompt).usage_metadata
    assert real is not None and report.prompt_tokens >= real["input_tokens"]
    assert chat.count_tokens(prompt) == report.prompt_tokens
    # Bound tools count toward the prompt (the fixture renders them into the prompt too).
    tools = chat.bind_tools([GetWeather], tool_choice="GetWeather")
    with_tools = chat.check_fit(prompt, max_tokens=1, tools=[GetWeather])
    real = tools.invoke(prompt).usage_metadata
    assert real is not None and with_tools.prompt_tokens >= real["input_tokens"]


def test_structured_output_by_a_forced_call(
    deepseek_server_url: str, control: httpx.Client
) -> None:
    chat = make(deepseek_server_url, max_tokens=40)
    out = chat.with_structured_output(GetWeather).invoke("What is the weather in Paris?")
    assert isinstance(out, GetWeather) and isinstance(out.city, str)
    (body,) = sent(control)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "GetWeather"}}
    json_mode = chat.with_structured_output(method="json_mode").invoke(
        "Give JSON with keys name and age for Alice, 30."
    )
    assert isinstance(json_mode, dict)  # an object; its words are the tiny model's


def test_health(deepseek_server_url: str, control: httpx.Client) -> None:
    h = make(deepseek_server_url, model="deepseek-reasoner").health()
    assert h.alive and h.ready and h.context_window == 128_000
    assert [r["path"] for r in control.get("/__fixture__/requests").json()] == ["/models"]
    refused = make(deepseek_server_url, api_key="not-a-deepseek-key").health()
    assert refused.alive and not refused.ready and "refused the key" in refused.detail
    other = make(deepseek_server_url, model="deepseek-coder").health()
    assert other.alive and not other.ready and "deepseek-chat" in other.detail
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 402})
    broke = make(deepseek_server_url).health()
    assert broke.alive and not broke.ready
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 503})
    overloaded = make(deepseek_server_url).health()  # answers it cannot serve: down
    assert not overloaded.alive and not overloaded.ready and "503" in overloaded.detail
    down = make(f"http://127.0.0.1:{peers.free_port()}", health_timeout=2).health()
    assert not down.alive and not down.ready
    assert asyncio.run(make(deepseek_server_url).ahealth()).ready
