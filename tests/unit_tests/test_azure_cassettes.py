"""ChatAzureOpenAI replayed from cassettes: real traffic, offline.

The cassettes under ``tests/cassettes/azure/<source>/`` were recorded against an Azure OpenAI
endpoint; ``<source>`` says which: ``real`` (an Azure OpenAI resource, ``make record-azure``)
or ``fixture`` (the repository's spec-validated Azure fixture, the only Azure OpenAI these
machines can reach). Replay prefers ``real`` where it exists. The key (``api-key`` and
``Authorization`` headers) is never written.

Recording (billed: a few hundred tokens on a real resource)::

    AZURE_OPENAI_ENDPOINT=https://NAME.openai.azure.com AZURE_OPENAI_API_KEY=... \\
    AZURE_OPENAI_DEPLOYMENT=gpt-4o make record-azure

``OPENAI_API_VERSION`` picks the API version (default 2024-10-21);
``AZURE_CASSETTE_SOURCE=fixture`` names fixture recordings; ``AZURE_CASSETTE_DIR`` writes
elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import BaseModel, Field

from langchain_multillm import ChatAzureOpenAI
from tests.unit_tests import cassettes

# tiktoken's encodings (exact counts, stream usage) from the offline cache, never the network.
pytestmark = [pytest.mark.vcr, pytest.mark.usefixtures("tiktoken_ready")]

# Set by `make record-azure` (keys in the environment alone do not record).
RECORDING = os.environ.get("AZURE_RECORDING") == "1"
# Replay needs no server: requests are matched on method, path, query and body, not the host.
REPLAY_URL = "http://azure.cassette"
API_VERSION = "2024-10-21"


vcr_config, vcr_cassette_dir = cassettes.setup(
    "azure", "AZURE", recording=RECORDING, filter_headers=["api-key", "authorization"]
)


def make(**kw: Any) -> ChatAzureOpenAI:
    if RECORDING:
        endpoint = os.environ["AZURE_OPENAI_ENDPOINT"]
        key = os.environ["AZURE_OPENAI_API_KEY"]
        deployment = os.environ.get("AZURE_OPENAI_DEPLOYMENT", "gpt-4o")
        version = os.environ.get("OPENAI_API_VERSION", API_VERSION)
    else:
        endpoint, key, deployment, version = REPLAY_URL, "replay", "gpt-4o", API_VERSION
    return ChatAzureOpenAI(
        azure_endpoint=endpoint,
        api_key=key,
        azure_deployment=deployment,
        api_version=version,
        temperature=0,
        max_retries=0,
        **kw,
    )


def test_chat_invoke_and_stream() -> None:
    llm = make(max_tokens=16)
    out = llm.invoke("What is the capital of France? Answer in one word.")
    assert out.content and out.response_metadata["finish_reason"]
    assert out.response_metadata["prompt_filter_results"]
    assert "hate" in out.response_metadata["content_filter_results"]
    assert out.usage_metadata and out.usage_metadata["input_tokens"] > 0
    chunks = list(llm.stream("Say hello."))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.text.strip() and full.response_metadata["finish_reason"]
    # The first chunk (no choices, the prompt's filter results) survived.
    assert full.response_metadata["prompt_filter_results"]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


def test_forced_tool_call() -> None:
    llm = make(max_tokens=40).bind_tools([GetWeather], tool_choice="GetWeather")
    out = llm.invoke("What is the weather in Paris?")
    (call,) = out.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)


def test_health() -> None:
    llm = make()
    shallow = llm.health()
    assert shallow.alive and not shallow.ready
    deep = llm.health(deep=True)
    assert deep.alive and deep.ready and deep.context_window
