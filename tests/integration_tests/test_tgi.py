"""ChatTGI and TGI against the TGI protocol fixture: limits, counts, the checks before
sending, streams, TGI's errors, health; every exchange validated against TGI's OpenAPI spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from langchain_multillm import (
    TGI,
    BackendError,
    BadRequestError,
    ChatTGI,
    ContextWindowExceededError,
    InvalidInputError,
    RateLimitError,
)
from tests.integration_tests.parity import assert_four_ways_agree

pytestmark = [pytest.mark.tgi, pytest.mark.timeout(300)]

Q = [("system", "Answer in one short sentence."), ("human", "What is the capital of France?")]


@pytest.fixture
def control(tgi_server_url: str) -> Iterator[httpx.Client]:
    """The fixture's test-only routes; state reset around each test, violations checked."""
    with httpx.Client(base_url=tgi_server_url, timeout=60) as c:
        c.post("/__fixture__/reset")
        yield c
        assert c.get("/__fixture__/violations").json() == []  # every response met the spec
        c.post("/__fixture__/reset")


def sent(control: httpx.Client, path: str) -> list[dict[str, Any]]:
    return [r["json"] for r in control.get("/__fixture__/requests").json() if r["path"] == path]


@pytest.fixture
def chat(tgi_server_url: str) -> ChatTGI:
    return ChatTGI(base_url=tgi_server_url, temperature=0, max_tokens=24, seed=1)


def test_limits_counts_and_health(chat: ChatTGI, control: httpx.Client) -> None:
    limits = chat.get_limits()
    assert (limits.context_window, limits.max_input_tokens) == (2048, 1024)
    out = chat.invoke(Q)
    assert chat.count_tokens(Q) == out.usage_metadata["input_tokens"]  # /chat_tokenize
    h = chat.health()
    assert h.alive and h.ready and h.context_window == 2048
    assert not sent(control, "/generate") and not sent(control, "/v1/chat/completions")[1:]


def test_four_ways_agree(chat: ChatTGI, control: httpx.Client) -> None:
    assert_four_ways_agree(chat, Q)


def test_checks_before_sending(chat: ChatTGI, control: httpx.Client, tgi_server_url: str) -> None:
    with pytest.raises(InvalidInputError, match="stop"):
        chat.invoke(Q, stop=["a", "b", "c", "d", "e"])  # /info: max_stop_sequences 4
    long = [("human", "Tell me about the sea. " * 250)]  # ~1500 tokens: over max_input_tokens
    with pytest.raises(ContextWindowExceededError) as info:
        chat.invoke(long)
    assert info.value.fit is not None and info.value.fit.max_input_tokens == 1024
    assert not sent(control, "/v1/chat/completions")
    # Unchecked, the server refuses it itself: the same typed error, from TGI's 422.
    with pytest.raises(ContextWindowExceededError, match="must have less than 1024 tokens"):
        chat.invoke(long, context_overflow="ignore")
    completion = TGI(base_url=tgi_server_url, max_new_tokens=8)
    with pytest.raises(InvalidInputError, match="stop"):
        completion.invoke("Hello", stop=["a", "b", "c", "d", "e"])
    assert not sent(control, "/generate")


def test_generate_routes(tgi_server_url: str, control: httpx.Client) -> None:
    llm = TGI(base_url=tgi_server_url, max_new_tokens=12, temperature=0, top_k=5, top_p=0.9)
    text = llm.invoke("The capital of France is")
    streamed = "".join(llm.stream("The capital of France is"))
    assert text and streamed == text  # greedy: the same text both ways
    (body, _) = sent(control, "/generate") + sent(control, "/generate_stream")
    # temperature 0: greedy. TGI samples when any warper is set, so top_k/top_p stay home.
    assert body["parameters"]["do_sample"] is False
    assert not {"temperature", "top_k", "top_p"} & set(body["parameters"])
    result = llm.generate(["The capital of France is"])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] in ("length", "eos_token", "stop_sequence")
    chunks = list(llm._stream("Once upon a time"))
    usage = chunks[-1].generation_info["usage"]
    assert usage["prompt_tokens"] == llm.count_tokens("Once upon a time")
    assert usage["completion_tokens"] <= 12


def test_structured_output_through_tgis_grammar(chat: ChatTGI, control: httpx.Client) -> None:
    class City(BaseModel):
        name: str
        country: str

    out = chat.with_structured_output(City).invoke("Paris is in France. Give the city.")
    assert isinstance(out, City)
    (body,) = sent(control, "/v1/chat/completions")
    assert body["response_format"]["type"] == "json_schema"


def test_tgi_errors_in_the_error_tree(chat: ChatTGI, control: httpx.Client) -> None:
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 429})
    assert chat.invoke(Q).content  # overloaded once: retried
    assert len(sent(control, "/v1/chat/completions")) == 2
    control.post("/__fixture__/state", json={"fail_next": 3, "fail_status": 429})
    with pytest.raises(RateLimitError, match="overloaded"):
        chat.model_copy(update={"max_retries": 0}).invoke(Q)
    control.post("/__fixture__/reset")
    once = chat.model_copy(update={"max_retries": 0})
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 424})
    with pytest.raises(BackendError, match="during generation"):
        once.invoke(Q)
    control.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 424})
    with pytest.raises(BadRequestError, match="during generation"):
        list(once.stream(Q))  # TGI reports it inside the chat stream, labelled 422


def test_unhealthy_server_is_down(chat: ChatTGI, control: httpx.Client) -> None:
    """/health answers 503 "unhealthy": the model cannot answer, so not even alive."""
    control.post("/__fixture__/state", json={"healthy": False})
    h = chat.health()
    assert not h.alive and not h.ready and h.detail == "/health answered 503: unhealthy"
    assert not chat.is_alive()
    other = chat.model_copy(update={"model_name": "some/other-model"})
    control.post("/__fixture__/state", json={"healthy": True})
    h = other.health()  # healthy, but not the configured model: alive, not ready
    assert h.alive and not h.ready and "not served" in h.detail
