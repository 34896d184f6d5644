"""Structured output cut by max_tokens on the real engine (the bundled SmolLM2 GGUF): the
error says it was cut and names max_tokens, whatever the model writes in three tokens."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from langchain_multillm import ChatLlamaCpp, IncompleteResponseError

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def chat(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, seed=1, max_tokens=3)


@pytest.mark.parametrize("method", ["json_schema", "json_mode", "function_calling"])
def test_three_tokens_of_a_schema_raise_cut_by_max_tokens(chat: ChatLlamaCpp, method: str) -> None:
    structured = chat.with_structured_output(City, method=method)  # type: ignore[arg-type]
    with pytest.raises(IncompleteResponseError) as info:
        structured.invoke("Name a city in Italy.")
    assert "cut by max_tokens" in str(info.value) and "raise max_tokens" in str(info.value)
    assert info.value.partial_text or method == "function_calling"


def test_stream_and_async_raise_the_same(chat: ChatLlamaCpp) -> None:
    structured = chat.with_structured_output(City)
    with pytest.raises(IncompleteResponseError, match="cut by max_tokens"):
        list(structured.stream("Name a city in Italy."))


async def test_ainvoke_raises_the_same(chat: ChatLlamaCpp) -> None:
    with pytest.raises(IncompleteResponseError, match="cut by max_tokens"):
        await chat.with_structured_output(City).ainvoke("Name a city in Italy.")


def test_include_raw_gives_it_as_the_parsing_error(chat: ChatLlamaCpp) -> None:
    out = chat.with_structured_output(City, include_raw=True).invoke("Name a city in Italy.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], IncompleteResponseError)
    assert out["raw"].response_metadata["finish_reason"] == "length"
