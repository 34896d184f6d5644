"""ChatDeepSeek replayed from cassettes: real traffic, offline.

The cassettes under ``tests/cassettes/deepseek/<source>/`` were recorded against a DeepSeek
API; ``<source>`` says which: ``real`` (DeepSeek itself, ``DEEPSEEK_API_KEY=... make
record-deepseek``) or ``fixture`` (the repository's spec-validated DeepSeek fixture, the only
DeepSeek these machines can reach). Replay prefers ``real`` where it exists. The key
(``Authorization``) is never written.

Recording: ``DEEPSEEK_API_KEY=sk-... make record-deepseek`` (the API at
``DEEPSEEK_API_BASE``, default https://api.deepseek.com; ``DEEPSEEK_CASSETTE_SOURCE=fixture``
names fixture recordings; ``DEEPSEEK_CASSETTE_DIR`` writes elsewhere). Recording calls the
API, so a real key is billed a few hundred tokens.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field

from langchain_multillm import ChatDeepSeek
from tests.unit_tests import cassettes

pytestmark = pytest.mark.vcr

# Set by `make record-deepseek` (a DEEPSEEK_API_KEY in the environment alone does not record).
RECORDING = os.environ.get("DEEPSEEK_RECORDING") == "1"
# Replay needs no server: requests are matched on method, path and body, not on the host.
REPLAY_URL = "http://deepseek.cassette"
REPLAY_KEY = "sk-replay"


vcr_config, vcr_cassette_dir = cassettes.setup(
    "deepseek", "DEEPSEEK", recording=RECORDING, filter_headers=["authorization"]
)


def make(**kw: Any) -> ChatDeepSeek:
    if RECORDING:
        base = os.environ.get("DEEPSEEK_API_BASE") or "https://api.deepseek.com"
        key = os.environ["DEEPSEEK_API_KEY"]
    else:
        base, key = REPLAY_URL, REPLAY_KEY
    return ChatDeepSeek(base_url=base, api_key=key, temperature=0, max_retries=0, **kw)


def test_chat_invoke_and_stream() -> None:
    llm = make(max_tokens=16)
    out = llm.invoke("What is the capital of France? Answer in one word.")
    assert out.content and out.response_metadata["finish_reason"]
    assert out.usage_metadata and out.usage_metadata["input_tokens"] > 0
    assert "cache_read" in out.usage_metadata["input_token_details"]
    chunks = list(llm.stream("Say hello."))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.text.strip() and full.response_metadata["finish_reason"]
    assert full.usage_metadata and full.usage_metadata["output_tokens"] > 0


def test_reasoner_keeps_reasoning_and_does_not_send_it_back() -> None:
    # Room for the reasoning and a short answer (DeepSeek counts both against max_tokens).
    llm = make(model="deepseek-reasoner", max_tokens=1024)
    question = "What is the capital of France? Answer in one word."
    first = llm.invoke(question)
    assert first.content and first.additional_kwargs["reasoning_content"]
    assert first.usage_metadata and first.usage_metadata["output_token_details"]["reasoning"] > 0
    # A second turn: the API answers 400 when reasoning_content comes back.
    chunks = list(llm.stream([HumanMessage(question), first, HumanMessage("And of Italy?")]))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.additional_kwargs["reasoning_content"] and full.text


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


def test_forced_tool_call() -> None:
    llm = make(max_tokens=40).bind_tools([GetWeather], tool_choice="GetWeather")
    out = llm.invoke("What is the weather in Paris?")
    (call,) = out.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)
    assert out.response_metadata["finish_reason"] in ("tool_calls", "stop")


def test_health() -> None:
    report = make(model="deepseek-reasoner").health()
    assert report.alive and report.ready and report.context_window
