"""ChatGemini replayed from cassettes: real traffic, offline.

The cassettes under ``tests/cassettes/gemini/<source>/`` were recorded against a Gemini API;
``<source>`` says which: ``real`` (Google's, ``GEMINI_API_KEY=... make record-gemini``) or
``fixture`` (the repository's Gemini protocol fixture, the only Gemini these machines can
reach). Replay prefers ``real`` where it exists. The key (``x-goog-api-key``, or a ``key=``
query parameter) is never written.

Recording: ``GEMINI_API_KEY=... make record-gemini`` (the API at ``GEMINI_BASE_URL``, default
google-genai's; ``GEMINI_CASSETTE_SOURCE=fixture`` names fixture recordings;
``GEMINI_CASSETTE_DIR`` writes elsewhere). Recording calls the API: a real key spends a few
hundred tokens.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from langchain_multillm import ChatGemini
from tests.unit_tests import cassettes

pytestmark = pytest.mark.vcr

# Set by `make record-gemini` (a GEMINI_API_KEY in the environment alone does not record).
RECORDING = os.environ.get("GEMINI_RECORDING") == "1"
# Replay needs no server: requests are matched on method, path, query and body, not the host.
REPLAY_URL = "http://gemini.cassette"
REPLAY_KEY = "AIzaReplayKey"
Q = "What is the capital of France? Answer in one word."


vcr_config, vcr_cassette_dir = cassettes.setup(
    "gemini",
    "GEMINI",
    recording=RECORDING,
    filter_headers=["x-goog-api-key", "authorization"],
    filter_query_parameters=["key"],
)


def make(**kw: Any) -> ChatGemini:
    if RECORDING:
        base = os.environ.get("GEMINI_BASE_URL") or None
        key = os.environ["GEMINI_API_KEY"]
    else:
        base, key = REPLAY_URL, REPLAY_KEY
    # httpx clients (vcrpy records and replays httpx; google-genai's default is httpx2).
    return ChatGemini(
        base_url=base,
        api_key=key,
        temperature=0,
        max_retries=0,
        thinking_budget=0,
        http_client=httpx.Client(timeout=120),
        http_async_client=httpx.AsyncClient(timeout=120),
        **kw,
    )


def test_chat_invoke_and_stream() -> None:
    llm = make(max_tokens=16)
    out = llm.invoke([("system", "Be brief."), ("human", Q)])
    assert out.content and out.response_metadata["finish_reason"] in ("STOP", "MAX_TOKENS")
    assert out.usage_metadata and out.usage_metadata["input_tokens"] > 0
    chunks = list(llm.stream("Say hello."))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.text.strip() and full.response_metadata["finish_reason"]
    assert full.usage_metadata and full.usage_metadata["output_tokens"] > 0


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


def test_forced_tool_call() -> None:
    llm = make(max_tokens=40).bind_tools([GetWeather], tool_choice="GetWeather")
    out = llm.invoke("What is the weather in Paris?")
    (call,) = out.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)


def test_count_tokens_matches_usage() -> None:
    llm = make(max_tokens=8)
    messages = [("system", "Be brief."), ("human", Q)]
    n = llm.count_tokens(messages)
    assert n == llm.invoke(messages).usage_metadata["input_tokens"]  # type: ignore[index]


def test_health_and_limits() -> None:
    llm = make()
    report = llm.health()
    assert report.alive and report.ready and report.context_window
    limits = llm.get_limits()
    assert limits.max_input_tokens and limits.max_output_tokens
