"""ChatDeepSeek against DeepSeek's API in an httpx.MockTransport: reasoning kept and never
sent back, cache and reasoning usage, 402 not retried, the conservative count, health."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage

from langchain_multillm import (
    BackendUnavailableError,
    ChatDeepSeek,
    PermissionDeniedError,
    RateLimitError,
)

BASE = "http://deepseek.invalid"
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 30,
    "total_tokens": 42,
    "prompt_cache_hit_tokens": 8,
    "prompt_cache_miss_tokens": 4,
    "completion_tokens_details": {"reasoning_tokens": 25},
}


class FakeDeepSeek:
    def __init__(self, fail: list[tuple[int, dict]] | None = None) -> None:
        self.fail = list(fail or [])
        self.bodies: list[dict] = []
        self.paths: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.headers.get("authorization") != "Bearer sk-test":
            return httpx.Response(
                401,
                json={"error": {"message": "Authentication Fails", "type": "authentication_error"}},
            )
        if request.url.path == "/models":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {"id": "deepseek-chat", "object": "model", "owned_by": "deepseek"},
                        {"id": "deepseek-reasoner", "object": "model", "owned_by": "deepseek"},
                    ],
                },
            )
        body = json.loads(request.content)
        self.bodies.append(body)
        if any("reasoning_content" in m for m in body["messages"]):
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": "reasoning_content must not be sent back",
                        "type": "invalid_request_error",
                    }
                },
            )
        if self.fail:
            status, err = self.fail.pop(0)
            return httpx.Response(status, json=err)
        if body.get("stream"):
            events = [
                {
                    "id": "r",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "reasoning_content": r},
                            "finish_reason": None,
                        }
                    ],
                }
                for r in ("Count ", "the r's.")
            ] + [
                {
                    "id": "r",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": "3"}, "finish_reason": "stop"}],
                },
                {
                    "id": "r",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [],
                    "usage": USAGE,
                },
            ]
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(
                200, content=data.encode(), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(
            200,
            json={
                "id": "r",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {
                            "role": "assistant",
                            "content": "3",
                            "reasoning_content": "Count the r's.",
                        },
                    }
                ],
                "usage": USAGE,
            },
        )


def make(fake: FakeDeepSeek, **kw: Any) -> ChatDeepSeek:
    t = httpx.MockTransport(fake.handler)
    kw.setdefault("api_key", "sk-test")
    return ChatDeepSeek(
        base_url=BASE,
        http_client=httpx.Client(transport=t),
        http_async_client=httpx.AsyncClient(transport=t),
        **kw,
    )


def test_key_is_required_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    with pytest.raises(ValueError, match="DEEPSEEK_API_KEY"):
        ChatDeepSeek()
    llm = ChatDeepSeek(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(llm) and "sk-very-secret" not in llm.model_dump_json()
    assert llm.base_url == "https://api.deepseek.com"


def test_reasoning_is_kept_and_never_sent_back() -> None:
    fake = FakeDeepSeek()
    llm = make(fake, model="deepseek-reasoner")
    first = llm.invoke("How many r's in strawberry?")
    assert first.content == "3"
    assert first.additional_kwargs["reasoning_content"] == "Count the r's."
    second = llm.invoke([HumanMessage("How many r's in strawberry?"), first, HumanMessage("Sure?")])
    assert second.content == "3"  # the fake answers 400 if reasoning_content comes back
    assert all("reasoning_content" not in m for m in fake.bodies[-1]["messages"])


def test_stream_carries_reasoning_and_usage_details() -> None:
    llm = make(FakeDeepSeek(), model="deepseek-reasoner")
    chunks = list(llm.stream("How many r's?"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content == "3"
    assert full.additional_kwargs["reasoning_content"] == "Count the r's."
    assert full.usage_metadata["input_token_details"] == {"cache_read": 8}
    assert full.usage_metadata["output_token_details"] == {"reasoning": 25}
    assert full.response_metadata["finish_reason"] == "stop"


def test_insufficient_balance_is_permission_denied_and_not_retried() -> None:
    fake = FakeDeepSeek(
        fail=[(402, {"error": {"message": "Insufficient Balance", "type": "unknown_error"}})] * 3
    )
    with pytest.raises(PermissionDeniedError, match="Insufficient Balance"):
        make(fake, max_retries=2).invoke("hi")
    assert len(fake.bodies) == 1


@pytest.mark.parametrize(("status", "cls"), [(429, RateLimitError), (503, BackendUnavailableError)])
def test_rate_limit_and_overload_are_retried(status: int, cls: type) -> None:
    err = {"error": {"message": "busy", "type": "rate_limit"}}
    assert make(FakeDeepSeek(fail=[(status, err)]), max_retries=1).invoke("hi").content == "3"
    with pytest.raises(cls):
        make(FakeDeepSeek(fail=[(status, err)] * 2), max_retries=0).invoke("hi")


def test_counts_are_a_conservative_bound_marked_not_exact() -> None:
    llm = make(FakeDeepSeek())
    report = llm.check_fit("Hello there, how are you?", max_tokens=100)
    assert report.fits and report.exact is False and report.context_window == 128_000
    assert report.prompt_tokens >= len(b"Hello there, how are you?")
    assert llm.count_tokens("héllo") >= len("héllo".encode())


def test_health_is_get_models() -> None:
    fake = FakeDeepSeek()
    h = make(fake, model="deepseek-reasoner").health()
    assert h.alive and h.ready and fake.paths == ["/models"] and fake.bodies == []
    h = make(FakeDeepSeek(), model="deepseek-coder-9000").health()
    assert h.alive and not h.ready
    h = make(FakeDeepSeek(), api_key="sk-wrong").health()
    assert h.alive and not h.ready and "refused the key" in h.detail
    h = ChatDeepSeek(api_key="sk-test", base_url="http://127.0.0.1:9", health_timeout=1).health()
    assert not h.alive
