"""Shared fixtures: the real local peers (llama.cpp, llama_cpp.server, the vLLM CPU server).

Under ``REQUIRE_PEERS=1`` (what ``.ci/run`` sets) a missing peer fails the test that needs it;
otherwise it is skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers

REQUIRE_PEERS = os.environ.get("REQUIRE_PEERS") == "1"
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


@pytest.fixture(scope="session")
def tgi_server_url(llama_cpp_available: str) -> Iterator[str]:
    """The TGI protocol fixture on 127.0.0.1 (root URL, no /v1): answers as TGI 3.3.6 does,
    generates with the bundled SmolLM2, validates all traffic against tests/fixtures/specs."""
    try:
        import uvicorn  # noqa: F401

        from tests.fixtures import tgi_server  # jsonschema, referencing, starlette
    except ImportError as exc:
        peer_missing(f"the TGI fixture's dependencies ({exc}); run `make install`")
        raise
    if not tgi_server.DEFAULT_SPEC.is_file():
        peer_missing(f"the TGI OpenAPI spec is not at {tgi_server.DEFAULT_SPEC}")
    port = peers.free_port()
    log = LOG_DIR / "tgi_fixture.log"
    proc = peers.start_tgi_fixture(port, log, llama_cpp_available)
    try:
        peers.wait_ready(f"http://127.0.0.1:{port}/health", proc, 60, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        peers.stop(proc)


def pytest_configure(config: pytest.Config) -> None:
    Path(LOG_DIR).mkdir(parents=True, exist_ok=True)
