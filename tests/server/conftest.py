"""The gateway's tests: every test here carries the ``server`` marker (``make test-server``),
except those marked for another peer's tier (``vllm_server``: the gateway in front of the real
vLLM CPU server, run by ``make test-vllm``), so each test runs in exactly one tier.

``gateway`` is the real thing: ``multillm serve --config ...`` on uvicorn on a free port, in its
own process, with the embedded llama.cpp model (SmolLM2) behind it. ``relay`` puts a gateway in
front of its own llama_cpp.server peer (through ``vllm-server:`` and a base_url), which a test
may stop mid-stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
from tests.conftest import LOG_DIR, peer_missing

HERE = Path(__file__).resolve().parent
KEY = "test-gateway-key"


# Tiers of their own: a test here with one of these markers runs in that tier, not in ``server``.
OTHER_TIERS = ("vllm_server",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        if not any(item.get_closest_marker(tier) for tier in OTHER_TIERS):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def server_deps() -> None:
    """The [server] extra and the clients the tests speak with."""
    try:
        import openai  # noqa: F401
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        peer_missing(f"the [server] extra or the test clients ({exc}); run `make install`")


@dataclass
class Gateway:
    """A running gateway: its root URL, its process, its key and its log."""

    url: str
    proc: subprocess.Popen[bytes]
    key: str | None
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def start_gateway(
    config: dict[str, Any],
    path: Path,
    *,
    name: str = "gateway",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Gateway:
    """``multillm serve --config`` (written to ``path``) on a free port, ready (models loaded)."""
    import yaml

    port = peers.free_port()
    path.write_text(yaml.safe_dump(config))
    log = LOG_DIR / f"{name}.log"
    cmd = [
        sys.executable, "-m", "langchain_multillm.cli", "serve",
        "--config", str(path), "--port", str(port), *args,
    ]  # fmt: skip
    run_env = {**os.environ, **(env or {})}
    proc = peers._popen(cmd, log, run_env)
    url = f"http://127.0.0.1:{port}"
    try:
        peers.wait_ready(f"{url}/health", proc, 90, log)
    except RuntimeError:
        peers.stop(proc)
        raise
    keys = config.get("server", {}).get("api_keys") or []
    return Gateway(url, proc, keys[0] if keys else None, log)


def embedded(name: str = "smollm2", **extra: Any) -> dict[str, Any]:
    """A model entry for the embedded SmolLM2 (small answers, two threads)."""
    params = {"max_tokens": 12, "n_threads": 2, "temperature": 0, **extra.pop("params", {})}
    return {"name": name, "model": "llamacpp:", "params": params, **extra}


@pytest.fixture(scope="session")
def gateway(
    server_deps: None, llama_cpp_available: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The gateway with a key, serving the embedded model as ``smollm2`` (chat),
    ``smollm2-text`` (completion) and ``small`` (chat in a 256-token window)."""
    config = {
        "server": {"api_keys": [KEY]},
        "models": [
            embedded(),
            embedded("smollm2-text", kind="completion"),
            embedded("small", params={"n_ctx": 256}),
        ],
    }
    gw = start_gateway(config, tmp_path_factory.mktemp("gw") / "serve.yaml")
    try:
        yield gw
    finally:
        peers.stop(gw.proc)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=gateway.headers(), timeout=60) as c:
        yield c
