"""Unknown call parameters are refused by name, before anything is sent, by every backend (one
check in ``_start``, against each class's ``_call_params``); known ones still go out.

Each server backend runs on its unit tests' MockTransport fake, wrapped to record every request;
llama.cpp's model load is replaced by a sentinel (a refused call never gets that far).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from langchain_multillm import (
    TGI,
    ChatAzureOpenAI,
    ChatDeepSeek,
    ChatGemini,
    ChatTGI,
    ChatVLLMServer,
    InvalidInputError,
    MultiLLMError,
    VLLMServer,
)
from langchain_multillm._base import COMMON_CALL_PARAMS

from .fake_server import BASE, FakeServer
from .test_azure_unit import ENDPOINT
from .test_azure_unit import KEY as AZURE_KEY
from .test_azure_unit import Fake as FakeAzure
from .test_deepseek_unit import BASE as DEEPSEEK_BASE
from .test_deepseek_unit import FakeDeepSeek
from .test_gemini_unit import BASE as GEMINI_BASE
from .test_gemini_unit import KEY as GEMINI_KEY
from .test_gemini_unit import FakeGemini
from .test_tgi_unit import ROOT as TGI_ROOT
from .test_tgi_unit import FakeTGI


@dataclass
class Recorder:
    """Wraps a fake's handler: every request the model sends, with its JSON body."""

    handler: Callable[[httpx.Request], httpx.Response]

    def __post_init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.url.path, body))
        return self.handler(request)

    def clients(self) -> dict[str, Any]:
        transport = httpx.MockTransport(self)
        return {
            "http_client": httpx.Client(transport=transport),
            "http_async_client": httpx.AsyncClient(transport=transport),
        }

    def bodies(self) -> list[Any]:
        return [b for _, b in self.sent if isinstance(b, dict)]


def vllm_chat(r: Recorder) -> Any:
    return ChatVLLMServer(model="m", base_url=BASE, max_retries=0, **r.clients())


def vllm_completion(r: Recorder) -> Any:
    return VLLMServer(model="m", base_url=BASE, max_retries=0, **r.clients())


def tgi_chat(r: Recorder) -> Any:
    return ChatTGI(base_url=TGI_ROOT, max_retries=0, **r.clients())


def tgi_completion(r: Recorder) -> Any:
    return TGI(base_url=TGI_ROOT, max_retries=0, **r.clients())


def deepseek(r: Recorder) -> Any:
    return ChatDeepSeek(base_url=DEEPSEEK_BASE, api_key="sk-test", max_retries=0, **r.clients())


def azure(r: Recorder) -> Any:
    return ChatAzureOpenAI(
        azure_endpoint=ENDPOINT,
        azure_deployment="gpt-4o",
        api_version="2024-10-21",
        api_key=AZURE_KEY,
        max_retries=0,
        **r.clients(),
    )


def gemini(r: Recorder) -> Any:
    return ChatGemini(api_key=GEMINI_KEY, base_url=GEMINI_BASE, max_retries=0, **r.clients())


def _top(body: dict[str, Any], key: str) -> Any:
    return body.get(key)


def _tgi_parameter(body: dict[str, Any], key: str) -> Any:
    return (body.get("parameters") or {}).get(key)


def _gemini_config(body: dict[str, Any], key: str) -> Any:
    return (body.get("generationConfig") or {}).get({"top_k": "topK", "seed": "seed"}[key])


# name -> (model factory, fake handler factory, a known backend-specific key and value,
#          where that key shows in the sent body)
CASES: dict[str, tuple[Any, Callable[[], Any], dict[str, Any], Any]] = {
    "ChatVLLMServer": (vllm_chat, lambda: FakeServer().handler, {"top_k": 5}, _top),
    "VLLMServer": (vllm_completion, lambda: FakeServer().handler, {"min_tokens": 2}, _top),
    "ChatTGI": (tgi_chat, lambda: FakeTGI().handler, {"seed": 3}, _top),
    "TGI": (tgi_completion, lambda: FakeTGI().handler, {"top_k": 4}, _tgi_parameter),
    "ChatDeepSeek": (deepseek, lambda: FakeDeepSeek().handler, {"presence_penalty": 0.5}, _top),
    "ChatAzureOpenAI": (azure, lambda: FakeAzure().handler, {"seed": 7}, _top),
    "ChatGemini": (gemini, lambda: FakeGemini().handler, {"top_k": 3}, _gemini_config),
}


@pytest.fixture(autouse=True)
def _tiktoken(request: pytest.FixtureRequest) -> None:
    if "Azure" in request.node.name:
        request.getfixturevalue("tiktoken_ready")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_misspelled_parameter_is_refused_by_name_before_any_request(name: str, mode: str) -> None:
    factory, fake, _, _ = CASES[name]
    rec = Recorder(fake())
    llm = factory(rec)
    calls = {
        "invoke": lambda: llm.invoke("hi", temprature=0.2),
        "ainvoke": lambda: asyncio.run(llm.ainvoke("hi", temprature=0.2)),
        "stream": lambda: list(llm.stream("hi", temprature=0.2)),
    }
    with pytest.raises(InvalidInputError) as info:
        calls[mode]()
    assert info.value.field == "temprature"
    message = str(info.value)
    assert "did you mean 'temprature' -> 'temperature'" in message
    assert "allowed:" in message and "temperature" in message.split("allowed:")[1]
    assert rec.sent == []  # nothing went out: not the fit check, not the call


@pytest.mark.parametrize("name", sorted(CASES))
def test_known_parameters_still_go_out(name: str) -> None:
    factory, fake, known, where = CASES[name]
    rec = Recorder(fake())
    llm = factory(rec)
    with contextlib.suppress(MultiLLMError):  # a fake's answer may not fit the route: sent
        llm.invoke("hi", temperature=0.2, **known)
    ((key, value),) = known.items()
    assert any(where(b, key) == value for b in rec.bodies()), rec.bodies()


@pytest.mark.parametrize("name", sorted(CASES))
def test_several_unknown_keys_are_all_named(name: str) -> None:
    factory, fake, _, _ = CASES[name]
    rec = Recorder(fake())
    with pytest.raises(InvalidInputError) as info:
        factory(rec).invoke("hi", zzz_one=1, aaa_two=2)
    assert info.value.field == "aaa_two, zzz_one"
    assert rec.sent == []


class Answer(BaseModel):
    city: str


CHAT = ["ChatVLLMServer", "ChatTGI", "ChatDeepSeek", "ChatAzureOpenAI", "ChatGemini"]


@pytest.mark.parametrize("name", CHAT)
def test_keys_langchain_binds_pass(name: str) -> None:
    """bind_tools (tools, tool_choice, parallel_tool_calls) and with_structured_output
    (response_format or a forced tool, and ls_structured_output_format) are not refused."""
    factory, fake, _, _ = CASES[name]
    rec = Recorder(fake())
    llm = factory(rec)
    structured = llm.with_structured_output(Answer, include_raw=True)
    structured.invoke("Where is the Eiffel tower?")  # a parse failure is kept, not raised
    tools = llm.bind_tools([Answer], tool_choice="Answer", parallel_tool_calls=False)
    tools.invoke("Where is the Eiffel tower?")
    assert len(rec.bodies()) >= 2


def test_extra_body_goes_through_unchecked_and_must_be_a_dict() -> None:
    fake = FakeServer()
    rec = Recorder(fake.handler)
    llm = vllm_chat(rec)
    llm.invoke("hi", extra_body={"any_server_field": 1, "top_k": 9})
    body = fake.bodies[-1]
    assert body["any_server_field"] == 1 and body["top_k"] == 9 and "extra_body" not in body
    sent = len(rec.sent)
    with pytest.raises(InvalidInputError, match="extra_body: must be a dict"):
        llm.invoke("hi", extra_body=["not", "a", "dict"])
    assert len(rec.sent) == sent


def test_tgi_chat_points_generate_only_keys_to_tgi() -> None:
    rec = Recorder(FakeTGI().handler)
    with pytest.raises(InvalidInputError, match=r"^top_k: TGI's Messages API .* use TGI"):
        tgi_chat(rec).invoke("hi", top_k=4)
    assert rec.sent == []


def test_common_keys_are_taken_by_every_backend() -> None:
    """What every model has as a field can also be set per call, everywhere."""
    assert {"model", "temperature", "top_p", "max_tokens", "stop"} <= COMMON_CALL_PARAMS
    for name, (factory, fake, _, _) in CASES.items():
        allowed = factory(Recorder(fake()))._allowed_call_params()
        assert allowed >= COMMON_CALL_PARAMS, name


def test_llamacpp_refuses_before_loading_the_model(
    gguf_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_multillm import ChatLlamaCpp, LlamaCpp
    from langchain_multillm.backends import llamacpp

    class Loaded(Exception):
        pass

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise Loaded

    monkeypatch.setattr(llamacpp, "load_model", no_load)
    for cls in (ChatLlamaCpp, LlamaCpp):
        llm = cls(model_path=gguf_path)
        with pytest.raises(InvalidInputError) as info:
            llm.invoke("hi", temprature=0.2)
        assert info.value.field == "temprature" and "top_k" in str(info.value)
        with pytest.raises(Loaded):  # a known key passes the check: the model is asked for
            llm.invoke("hi", top_k=5)
    with pytest.raises(InvalidInputError, match="tool_choice"):
        LlamaCpp(model_path=gguf_path).invoke("hi", tool_choice="auto")  # chat only


def test_langchains_stream_switch_is_taken_and_never_sent() -> None:
    """``invoke(x, stream=False)`` is LangChain's per-call switch (it turns streaming off)."""
    fake = FakeServer()
    llm = ChatVLLMServer(model="m", max_retries=0, **fake.clients())
    llm.invoke("hi", stream=False)
    assert "stream" not in fake.bodies[-1]
