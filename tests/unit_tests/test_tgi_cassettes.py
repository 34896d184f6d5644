"""ChatTGI and TGI replayed from cassettes: real traffic, offline.

The cassettes under ``tests/cassettes/tgi/<source>/`` were recorded against a TGI server;
``<source>`` says which: ``real`` (a real TGI, ``TGI_BASE_URL=... make record-tgi``) or
``fixture`` (the repository's spec-validated TGI fixture, the only TGI these machines can run).
Replay prefers ``real`` where it exists. Authorization headers are never written.

Recording: ``TGI_BASE_URL=http://host:8080 make record-tgi`` (``TGI_CASSETTE_SOURCE=fixture``
names fixture recordings; ``TGI_CASSETTE_DIR`` writes elsewhere).
"""

from __future__ import annotations

import os

import pytest

from langchain_multillm import TGI, ChatTGI
from tests.unit_tests import cassettes

pytestmark = pytest.mark.vcr

RECORDING = bool(os.environ.get("TGI_BASE_URL"))
# Replay needs no server: requests are matched on method, path and body, not on the host.
REPLAY_URL = "http://tgi.cassette:8080"


vcr_config, vcr_cassette_dir = cassettes.setup(
    "tgi", "TGI", recording=RECORDING, filter_headers=["authorization"]
)


def url() -> str:
    return os.environ.get("TGI_BASE_URL") or REPLAY_URL


def test_chat_invoke_and_stream() -> None:
    llm = ChatTGI(base_url=url(), max_tokens=16, temperature=0, seed=1, max_retries=0)
    out = llm.invoke("What is the capital of France? Answer in one word.")
    assert out.content and out.response_metadata["finish_reason"]
    assert out.usage_metadata and out.usage_metadata["input_tokens"] > 0
    chunks = list(llm.stream("Say hello."))
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].response_metadata.get("finish_reason")


def test_limits_and_counts() -> None:
    llm = ChatTGI(base_url=url(), max_retries=0)
    limits = llm.get_limits()
    assert limits.context_window and limits.max_input_tokens
    assert llm.count_tokens("Hello world") > 0
    assert llm.count_tokens([("human", "Hello world")]) > llm.count_tokens("Hello world")


def test_generate_and_generate_stream() -> None:
    llm = TGI(base_url=url(), max_new_tokens=8, temperature=0, seed=1, max_retries=0)
    assert llm.invoke("The capital of France is")
    pieces = list(llm.stream("Once upon a time"))
    assert "".join(pieces)
    result = llm.generate(["Hello"])
    assert result.generations[0][0].generation_info["finish_reason"] in (
        "length",
        "eos_token",
        "stop_sequence",
    )


def test_health() -> None:
    report = ChatTGI(base_url=url(), max_retries=0).health()
    assert report.alive and report.ready and report.context_window
