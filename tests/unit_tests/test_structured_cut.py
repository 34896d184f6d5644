"""Structured output cut by max_tokens: IncompleteResponseError naming max_tokens, not a
parser's error (the shared ``with_structured_output``, here through the vLLM client on the
in-process fake server: a cut answer is what a real server sends at ``max_tokens``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from pydantic import BaseModel

from langchain_multillm import BackendError, IncompleteResponseError
from langchain_multillm._structured import cut_by_max_tokens
from langchain_multillm.backends.vllm_server import ChatVLLMServer
from tests.unit_tests.fake_server import FakeServer, chunk, completion, sse


class City(BaseModel):
    name: str
    country: str


CITY_SCHEMA = City.model_json_schema()
CUT = '{"name": "Ro'


def model(*answers: httpx.Response) -> ChatVLLMServer:
    fake = FakeServer(window=4000)
    fake.chat = list(answers)
    return ChatVLLMServer(model="m", max_tokens=3, max_retries=0, **fake.clients())


def answer(content: str, finish: str = "length") -> httpx.Response:
    body = completion(content, finish)
    body["usage"] = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    return httpx.Response(200, json=body)


def tool_answer(arguments: str, finish: str) -> httpx.Response:
    body = completion("", finish)
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": "City", "arguments": arguments}}
    ]
    return httpx.Response(200, json=body)


def assert_cut(err: BaseException) -> None:
    assert isinstance(err, IncompleteResponseError) and isinstance(err, BackendError)
    text = str(err)
    assert "cut by max_tokens" in text and "after 3 output tokens" in text and "'length'" in text
    assert not err.is_retryable


@pytest.mark.parametrize("schema", [City, CITY_SCHEMA], ids=["pydantic", "json-schema"])
@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_cut_json_is_an_incomplete_response_naming_max_tokens(schema: Any, method: str) -> None:
    structured = model(answer(CUT)).with_structured_output(schema, method=method)  # type: ignore[arg-type]
    with pytest.raises(IncompleteResponseError) as info:
        structured.invoke("Name a city.")
    assert_cut(info.value)
    assert info.value.partial_text == CUT


def test_cut_tool_call_is_an_incomplete_response() -> None:
    structured = model(tool_answer('{"name": "Ro', "length")).with_structured_output(
        City, method="function_calling"
    )
    with pytest.raises(IncompleteResponseError, match="cut by max_tokens"):
        structured.invoke("Name a city.")
    # llama.cpp hands a cut call on as text, with no call at all: the parser would give None
    structured = model(answer('{"name": "City", "argu')).with_structured_output(
        City, method="function_calling"
    )
    with pytest.raises(IncompleteResponseError, match="cut by max_tokens"):
        structured.invoke("Name a city.")


def test_complete_json_at_exactly_max_tokens_is_the_answer() -> None:
    whole = json.dumps({"name": "Rome", "country": "Italy"})
    assert model(answer(whole)).with_structured_output(City).invoke("q") == City(
        name="Rome", country="Italy"
    )


def test_not_cut_a_bad_answer_is_still_the_parsers_error() -> None:
    structured = model(answer('{"name": 1}', finish="stop")).with_structured_output(City)
    with pytest.raises(OutputParserException):
        structured.invoke("q")
    ok = model(tool_answer('{"name": "Rome", "country": "Italy"}', "tool_calls"))
    assert ok.with_structured_output(City, method="function_calling").invoke("q") == City(
        name="Rome", country="Italy"
    )


def test_include_raw_gives_the_cut_as_the_parsing_error() -> None:
    out = model(answer(CUT)).with_structured_output(City, include_raw=True).invoke("q")
    assert out["parsed"] is None and out["raw"].content == CUT
    assert_cut(out["parsing_error"])


def test_stream_and_async_raise_the_same() -> None:
    events = [chunk('{"name": '), chunk('"Ro'), chunk(finish="length")]
    events.append(chunk(usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}))
    streamed = model(httpx.Response(200, content=sse(events))).with_structured_output(City)
    with pytest.raises(IncompleteResponseError) as info:
        list(streamed.stream("q"))
    assert_cut(info.value)


async def test_ainvoke_and_astream_raise_the_same() -> None:
    with pytest.raises(IncompleteResponseError) as info:
        await model(answer(CUT)).with_structured_output(City).ainvoke("q")
    assert_cut(info.value)
    events = [chunk('{"name": "Ro'), chunk(finish="length")]
    streamed = model(httpx.Response(200, content=sse(events))).with_structured_output(City)
    with pytest.raises(IncompleteResponseError, match="cut by max_tokens"):
        [c async for c in streamed.astream("q")]


@pytest.mark.parametrize(
    ("finish", "cut"),
    [("length", True), ("MAX_TOKENS", True), ("max_tokens", True), ("stop", False), (None, False)],
)
def test_finish_reasons_that_mean_max_tokens(finish: str | None, cut: bool) -> None:
    message = AIMessage("x", response_metadata={"finish_reason": finish})
    assert (cut_by_max_tokens(message) is not None) is cut
