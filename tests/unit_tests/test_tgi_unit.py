"""ChatTGI and TGI against a TGI server in an httpx.MockTransport: what is sent, and the paths
a real server rarely shows (limits refused, overloaded, a cut stream)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel

from langchain_multillm import (
    TGI,
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    ChatTGI,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    RateLimitError,
)

ROOT = "http://tgi.invalid"
INFO = {
    "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "max_input_tokens": 50,
    "max_total_tokens": 100,
    "max_stop_sequences": 2,
    "max_concurrent_requests": 8,
    "max_best_of": 2,
    "max_client_batch_size": 4,
    "validation_workers": 2,
    "router": "text-generation-router",
    "version": "3.3.6",
}


def sse(events: list[dict]) -> bytes:
    return "".join(f"data:{json.dumps(e)}\n\n" for e in events).encode()


def token(text: str, special: bool = False) -> dict:
    return {"id": 1, "text": text, "logprob": -0.1, "special": special}


@dataclass
class FakeTGI:
    """TGI's routes; every request recorded; ``fail`` answers the next requests with errors."""

    health_status: int = 200
    fail: list[tuple[int, dict]] = field(default_factory=list)
    stream_cut: bool = False
    requests: list[tuple[str, Any]] = field(default_factory=list)
    hits: Counter = field(default_factory=Counter)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        self.requests.append((path, body))
        self.hits[path] += 1
        if path == "/info":
            return httpx.Response(200, json=INFO)
        if path == "/health":
            if self.health_status != 200:
                return httpx.Response(503, json={"error": "unhealthy", "error_type": "healthcheck"})
            return httpx.Response(200)
        if path == "/tokenize":
            return httpx.Response(
                200,
                json=[{"id": 1, "text": "x", "start": 0, "stop": 1}] * len(body["inputs"].split()),
            )
        if path == "/chat_tokenize":
            n = sum(len(str(m.get("content", "")).split()) + 3 for m in body["messages"]) + 1
            return httpx.Response(
                200,
                json={
                    "tokenize_response": [{"id": 1, "text": "x", "start": 0, "stop": 1}] * n,
                    "templated_text": "t",
                },
            )
        if self.fail:
            status, err = self.fail.pop(0)
            return httpx.Response(status, json=err)
        if path == "/v1/chat/completions":
            if body.get("stream"):
                chunks = [
                    {
                        "id": "c",
                        "created": 1,
                        "model": INFO["model_id"],
                        "system_fingerprint": "3.3.6",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": w},
                                "finish_reason": None,
                            }
                        ],
                    }
                    for w in ("Hi", " there")
                ]
                chunks.append(
                    {
                        "id": "c",
                        "created": 1,
                        "model": INFO["model_id"],
                        "system_fingerprint": "3.3.6",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                )
                data = sse(chunks) + b"data: [DONE]\n\n"
                return httpx.Response(
                    200, content=data, headers={"content-type": "text/event-stream"}
                )
            return httpx.Response(
                200,
                json={
                    "id": "c",
                    "created": 1,
                    "model": INFO["model_id"],
                    "system_fingerprint": "3.3.6",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hi there"},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                },
            )
        if path == "/generate":
            return httpx.Response(
                200,
                json={
                    "generated_text": "Paris.",
                    "details": {
                        "finish_reason": "eos_token",
                        "generated_tokens": 2,
                        "seed": None,
                        "prefill": [],
                        "tokens": [],
                    },
                },
            )
        if path == "/generate_stream":
            events = [
                {"index": i, "token": token(t), "generated_text": None, "details": None}
                for i, t in enumerate(("Par", "is."))
            ]
            if not self.stream_cut:
                events.append(
                    {
                        "index": 2,
                        "token": token("</s>", special=True),
                        "generated_text": "Paris.",
                        "details": {
                            "finish_reason": "eos_token",
                            "generated_tokens": 3,
                            "input_length": 4,
                            "seed": None,
                        },
                    }
                )
            return httpx.Response(
                200, content=sse(events), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(404, json={"error": "not found", "error_type": "not_found"})

    def sent(self, path: str) -> list[Any]:
        return [b for p, b in self.requests if p == path]


def make(cls: type, fake: FakeTGI, **kw: Any) -> Any:
    transport = httpx.MockTransport(fake.handler)
    return cls(
        base_url=ROOT + "/v1",  # a trailing /v1 is dropped: TGI's routes hang off the root
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
        **kw,
    )


def test_settings() -> None:
    with pytest.raises(ValueError, match="TGI_BASE_URL"):
        ChatTGI(base_url=None)
    with pytest.raises(ValueError, match=r"top_k: TGI's Messages API .* use TGI"):
        ChatTGI(base_url=ROOT, top_k=5)
    assert ChatTGI(base_url=ROOT + "/v1/").base_url == ROOT
    assert TGI(base_url=ROOT, max_new_tokens=7).max_tokens == 7
    assert ChatTGI(base_url=ROOT, max_tokens=9).model_name == "tgi"


def test_chat_body_is_tgi_shaped() -> None:
    fake = FakeTGI()

    class Answer(BaseModel):
        city: str

    llm = make(ChatTGI, fake, temperature=0, max_tokens=20, seed=3)
    llm.bind_tools([Answer], tool_choice="Answer").invoke(
        [
            HumanMessage("Where?"),
            AIMessage("", tool_calls=[{"name": "Answer", "args": {"city": "Paris"}, "id": "t1"}]),
            ToolMessage("ok", tool_call_id="t1"),
            HumanMessage("Again?"),
        ]
    )
    (body,) = fake.sent("/v1/chat/completions")
    assert body["tools"][0]["function"]["arguments"]["properties"]["city"]["type"] == "string"
    assert "parameters" not in body["tools"][0]["function"]
    assert body["tool_choice"] == {"function": {"name": "Answer"}}
    assert body["messages"][1] == {
        "role": "assistant",
        "tool_calls": body["messages"][1]["tool_calls"],
    }
    assert "tool_call_id" not in body["messages"][2]
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0, 20, 3)

    llm.bind(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "A", "schema": {"type": "object"}},
        }
    ).invoke("q")
    assert fake.sent("/v1/chat/completions")[-1]["response_format"] == {
        "type": "json_schema",
        "value": {"name": "A", "schema": {"type": "object"}},
    }


def test_chat_invoke_and_stream_agree() -> None:
    fake = FakeTGI()
    llm = make(ChatTGI, fake)
    out = llm.invoke("Hello")
    assert out.content == "Hi there" and out.usage_metadata["total_tokens"] == 9
    assert out.response_metadata["model_name"] == INFO["model_id"]
    streamed = "".join(c.text for c in llm.stream("Hello"))
    assert streamed == "Hi there"
    assert fake.hits["/info"] == 1  # limits asked once


def test_too_many_stop_sequences_are_refused_before_sending() -> None:
    fake = FakeTGI()
    for cls in (ChatTGI, TGI):
        llm = make(cls, fake)
        with pytest.raises(InvalidInputError, match="at most 2 stop sequences") as info:
            llm.invoke("Hello", stop=["a", "b", "c"])
        assert info.value.field == "stop"
    assert not fake.sent("/v1/chat/completions") and not fake.sent("/generate")


async def test_chat_completion_disabled_points_to_tgi_before_any_request() -> None:
    # A base model's server answers /chat_tokenize with a template error: the refusal must
    # come first, with nothing sent at all (the fit check would ask /info and /chat_tokenize).
    fake = FakeTGI()
    llm = make(ChatTGI, fake, chat_completion_enabled=False)
    with pytest.raises(ValueError, match="use TGI"):
        llm.invoke("Hello")
    with pytest.raises(ValueError, match="use TGI"):
        await llm.ainvoke("Hello")
    with pytest.raises(ValueError, match="use TGI"):
        list(llm.stream("Hello"))
    assert fake.requests == []


def test_completion_takes_prompt_templates_and_429_is_retried() -> None:
    from langchain_core.prompts import PromptTemplate

    fake = FakeTGI()
    fake.fail = [(429, {"error": "Model is overloaded", "error_type": "overloaded"})]
    chain = PromptTemplate.from_template("Say {word}.") | make(TGI, fake, max_retries=1)
    assert isinstance(chain.invoke({"word": "hi"}), str)
    sent = [body for path, body in fake.requests if path in ("/", "/generate")]
    assert len(sent) == 2 and all(b["inputs"] == "Say hi." for b in sent)


def test_limits_come_from_info_and_are_checked_before_sending() -> None:
    fake = FakeTGI()
    llm = make(ChatTGI, fake)
    limits = llm.get_limits()
    assert (limits.context_window, limits.max_input_tokens) == (100, 50)
    with pytest.raises(ContextWindowExceededError):
        llm.invoke("word " * 60)  # over max_input_tokens by /chat_tokenize's count
    assert not fake.sent("/v1/chat/completions")


def test_generate_body_maps_langchain_parameters() -> None:
    fake = FakeTGI()
    llm = make(
        TGI,
        fake,
        temperature=0.7,
        top_p=1.0,
        max_tokens=5,
        top_k=4,
        repetition_penalty=1.1,
        truncate=30,
        watermark=True,
        seed=2,
        grammar={"type": "regex", "value": "[A-Z]+"},
    )
    assert llm.invoke("The capital of France is") == "Paris."
    (body,) = fake.sent("/generate")
    assert body == {
        "inputs": "The capital of France is",
        "parameters": {
            "details": True,
            "return_full_text": False,
            "max_new_tokens": 5,
            "temperature": 0.7,
            "top_k": 4,
            "repetition_penalty": 1.1,
            "truncate": 30,
            "watermark": True,
            "seed": 2,
            "grammar": {"type": "regex", "value": "[A-Z]+"},
        },
    }
    # temperature 0 is greedy: do_sample false, and no warper (TGI samples when one is set).
    llm.invoke("x", temperature=0)
    params = fake.sent("/generate")[-1]["parameters"]
    assert params["do_sample"] is False and not {"temperature", "top_k", "top_p"} & set(params)


def test_generate_stream_usage_and_finish_from_the_last_event() -> None:
    fake = FakeTGI()
    llm = make(TGI, fake)
    chunks = list(llm.stream("The capital of France is"))
    assert "".join(chunks) == "Paris."  # the special </s> token is not text
    result = llm.generate(["x"])
    assert result.generations[0][0].generation_info["finish_reason"] == "eos_token"


def test_generate_stream_cut_before_details_is_incomplete() -> None:
    fake = FakeTGI(stream_cut=True)
    with pytest.raises(IncompleteResponseError) as info:
        list(make(TGI, fake, max_retries=0).stream("x"))
    assert info.value.partial_text == "Paris."


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (
            422,
            {
                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 100. Given: 40 `inputs` tokens and 70 `max_new_tokens`",
                "error_type": "validation",
            },
            ContextWindowExceededError,
        ),
        (
            422,
            {
                "error": "Input validation error: `temperature` must be strictly positive",
                "error_type": "validation",
            },
            BadRequestError,
        ),
        (
            424,
            {
                "error": "Request failed during generation: Server error: CUDA OOM",
                "error_type": "generation",
            },
            BackendError,
        ),
        (503, {"error": "unhealthy", "error_type": "healthcheck"}, BackendUnavailableError),
    ],
)
def test_errors_speak_the_error_tree(status: int, error: dict, expected: type) -> None:
    fake = FakeTGI(fail=[(status, error)] * 3)
    with pytest.raises(expected) as info:
        make(TGI, fake, max_retries=0).invoke("x")
    assert error["error"] in str(info.value)


def test_overloaded_is_a_rate_limit_and_is_retried() -> None:
    fake = FakeTGI(fail=[(429, {"error": "Model is overloaded", "error_type": "overloaded"})])
    assert make(ChatTGI, fake, max_retries=1).invoke("Hello").content == "Hi there"
    assert fake.hits["/v1/chat/completions"] == 2
    fake = FakeTGI(fail=[(429, {"error": "Model is overloaded", "error_type": "overloaded"})] * 2)
    with pytest.raises(RateLimitError):
        make(ChatTGI, fake, max_retries=0).invoke("Hello")


def test_health() -> None:
    h = make(ChatTGI, FakeTGI(), model="HuggingFaceTB/SmolLM2-135M-Instruct").health()
    assert h.alive and h.ready and h.context_window == 100
    h = make(ChatTGI, FakeTGI()).health()  # "tgi": whatever the server serves
    assert h.ready and h.model == INFO["model_id"]
    h = make(ChatTGI, FakeTGI(), model="other/model").health()
    assert h.alive and not h.ready and "not served" in h.detail
    h = make(ChatTGI, FakeTGI(health_status=503)).health()  # "unhealthy": cannot answer
    assert not h.alive and not h.ready and "/health answered 503: unhealthy" in h.detail
    h = ChatTGI(base_url="http://127.0.0.1:9", health_timeout=1).health()
    assert not h.alive
