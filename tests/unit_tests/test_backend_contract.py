"""The backend contract as code (docs/backends/writing.md): required hooks are abstract, the
flow methods are final and no backend overrides one, ``health(deep=True)`` works on every
backend, and ``_batches_in_engine`` puts a sync batch in flight at once."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
)

import langchain_multillm.backends
from langchain_multillm import ChatTGI
from langchain_multillm._base import (
    ChatRequest,
    CompletionRequest,
    ModelSurface,
    MultiLLMChatModel,
    MultiLLMCompletionModel,
)
from langchain_multillm._http import HTTPConnection
from langchain_multillm._openai import OpenAIChatOverHTTP, ToolsAndStructuredOutput
from langchain_multillm.health import HealthReport

CONTRACT = (
    ModelSurface,
    MultiLLMChatModel,
    MultiLLMCompletionModel,
    HTTPConnection,
    ToolsAndStructuredOutput,
    OpenAIChatOverHTTP,
)


def final_names(cls: type) -> set[str]:
    return {
        name
        for name, value in vars(cls).items()
        if getattr(value, "__final__", False) or getattr(inspect.unwrap(value), "__final__", False)
    }


def package_classes() -> list[type]:
    """Every class defined in the package's backends (imported without optional SDKs)."""
    out = []
    backends = langchain_multillm.backends
    for info in pkgutil.walk_packages(backends.__path__, f"{backends.__name__}."):
        module = importlib.import_module(info.name)  # a package's modules too (backends.vllm)
        out += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and c.__module__ == module.__name__
        ]
    return out


def test_the_flow_methods_are_final() -> None:
    finals = set().union(*(final_names(c) for c in CONTRACT))
    for name in ("health", "ahealth", "check_fit", "count_tokens", "_generate", "_stream",
                 "_start", "batch", "generate", "_post_json", "_sse", "bind_tools"):  # fmt: skip
        assert name in finals


@pytest.mark.parametrize("cls", package_classes(), ids=lambda c: c.__name__)
def test_no_backend_overrides_a_final_method(cls: type) -> None:
    finals = set().union(*(final_names(c) for c in CONTRACT if issubclass(cls, c)))
    assert not finals & set(vars(cls)), f"{cls.__name__} overrides {finals & set(vars(cls))}"


class Half(MultiLLMChatModel):
    """A chat backend that forgot its streams."""

    model_name: str = "half"

    @property
    def _llm_type(self) -> str:
        return "half"

    def _health(self) -> HealthReport:
        return HealthReport(alive=True, ready=True, latency_s=0.0)

    def _chat(self, req: ChatRequest) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])


def test_a_backend_missing_a_required_hook_cannot_be_built() -> None:
    with pytest.raises(TypeError, match="_achat_stream") as info:
        Half()
    assert "_chat_stream" in str(info.value)


# ------------------------------------------------------------------ health(deep=True)


def tgi(status: int) -> ChatTGI:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(status)
        return httpx.Response(200, json={"model_id": "served", "max_total_tokens": 64})

    mock = httpx.MockTransport(handler)
    return ChatTGI(
        base_url="http://tgi.invalid",
        model="served",
        http_client=httpx.Client(transport=mock),
        http_async_client=httpx.AsyncClient(transport=mock),
        max_retries=0,
    )


@pytest.mark.parametrize("status", [200, 503])
def test_deep_health_is_the_free_check_where_a_backend_has_no_deeper_one(status: int) -> None:
    llm = tgi(status)
    shallow, deep = llm.health(), llm.health(deep=True)
    adeep = asyncio.run(llm.ahealth(deep=True))
    assert (
        (shallow.ready, shallow.detail) == (deep.ready, deep.detail) == (adeep.ready, adeep.detail)
    )
    assert deep.ready is (status == 200)


# ------------------------------------------------------------------ _batches_in_engine


class Engine:
    """Counts the requests in flight together; each waits until ``wanted`` are."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.in_flight = 0
        self.most = 0

    async def serve(self, text: str) -> str:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        for _ in range(200):
            if self.most >= self.wanted:
                break
            await asyncio.sleep(0.005)
        self.in_flight -= 1
        return text.upper()


HEALTHY = HealthReport(alive=True, ready=True, latency_s=0.0)


class BatchingChat(MultiLLMChatModel):
    model_name: str = "batching"
    context_overflow: Any = "ignore"
    engine: Any = None
    _batches_in_engine: ClassVar[bool] = True

    @property
    def _llm_type(self) -> str:
        return "batching"

    def _health(self) -> HealthReport:
        return HEALTHY

    def _chat(self, req: ChatRequest) -> ChatResult:
        raise AssertionError("a batching engine is driven on the async path")

    async def _achat(self, req: ChatRequest) -> ChatResult:
        text = await self.engine.serve(str(req.messages[-1].content))
        msg = AIMessage(text, response_metadata={"finish_reason": "stop"})
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        raise AssertionError("not streamed")

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(""))
        raise AssertionError("not streamed")


class BatchingText(MultiLLMCompletionModel):
    model_name: str = "batching"
    context_overflow: Any = "ignore"
    engine: Any = None
    _batches_in_engine: ClassVar[bool] = True

    @property
    def _llm_type(self) -> str:
        return "batching-text"

    def _health(self) -> HealthReport:
        return HEALTHY

    def _complete(self, req: CompletionRequest) -> Generation:
        raise AssertionError("a batching engine is driven on the async path")

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        return Generation(text=await self.engine.serve(req.prompt))

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        raise AssertionError("not streamed")

    async def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text="")
        raise AssertionError("not streamed")


def test_a_batching_engine_gets_a_sync_batch_all_at_once() -> None:
    words = ["a", "b", "c", "d", "e", "f"]
    chat = BatchingChat(engine=Engine(len(words)))
    assert [m.content for m in chat.batch(words)] == [w.upper() for w in words]
    assert chat.engine.most == len(words)  # LangChain's own pool would run a few at a time

    chat = BatchingChat(engine=Engine(3))
    result = chat.generate([[HumanMessage(w)] for w in words[:3]])
    assert [g[0].text for g in result.generations] == ["A", "B", "C"]
    assert chat.engine.most == 3

    text = BatchingText(engine=Engine(4))
    assert text.batch(words[:4]) == ["A", "B", "C", "D"]
    assert text.engine.most == 4


def test_one_input_takes_the_ordinary_path() -> None:
    with pytest.raises(AssertionError, match="async path"):
        BatchingChat(engine=Engine(1)).batch(["a"])


def test_in_process_vllm_batches_in_its_engine() -> None:
    from langchain_multillm.backends.vllm import VLLM, ChatVLLM

    for cls in (ChatVLLM, VLLM):
        assert cls._batches_in_engine is True
        assert "_batches_in_engine" not in cls.__private_attributes__  # a class setting
    assert ChatTGI._batches_in_engine is False
