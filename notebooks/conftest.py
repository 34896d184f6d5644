"""Run the notebooks with nbmake: ``python -m pytest --nbmake notebooks``.

The vLLM notebook talks to a server given by ``VLLM_BASE_URL`` and starts nothing itself. If
that variable is not set, this file starts the repository's real vLLM CPU peer (SmolLM2 served
as "smollm2", window 2048), exports ``VLLM_BASE_URL`` so the notebook kernels inherit it, and
stops the server once the vLLM notebook has run (and, as a safety net, when the session ends).

When only notebooks are collected, the server starts in the background right after collection
(it takes about a minute, overlapping the other notebooks) and is waited for just before the
vLLM notebook runs. When other tests are collected too, it starts only when the vLLM notebook
is about to run, and reuses a ``VLLM_BASE_URL`` set by then: only one vLLM engine may run at a
time on these machines.

If the peer is not provisioned (``make peers``), the vLLM notebook is skipped with the reason,
or fails under ``REQUIRE_PEERS=1`` (what ``.ci/run`` sets).

The TGI, Azure, DeepSeek and Gemini notebooks talk to the endpoint their variable names
(``TGI_BASE_URL``, ``AZURE_OPENAI_ENDPOINT``, ``DEEPSEEK_API_BASE``, ``GEMINI_BASE_URL``);
when it is not set, this
file starts the repository's protocol fixture (tests/fixtures/, a few seconds) just for that
notebook: see ``FIXTURE_NOTEBOOKS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent
REPO_ROOT = NOTEBOOK_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import peers  # noqa: E402  (needs the repository root on sys.path)

REQUIRE_PEERS = os.environ.get("REQUIRE_PEERS") == "1"
LOG_PATH = REPO_ROOT / ".build" / "peer-logs" / "vllm_server_notebooks.log"
READY_TIMEOUT_S = 300.0

# Notebooks that need a vLLM server at VLLM_BASE_URL.
VLLM_NOTEBOOKS = {"vllm_server.ipynb"}


class _Peer:
    """The vLLM server this session started (if any), and why it is missing (if it is)."""

    needed: bool = False  # a selected vLLM notebook needs a server this file provides
    pending: int = 0  # selected vLLM notebooks that have not finished yet
    proc: subprocess.Popen | None = None
    health_url: str = ""
    ready: bool = False
    problem: str | None = None
    old_env: str | None = None


def _needs_vllm(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).name in VLLM_NOTEBOOKS


def _start_peer() -> None:
    """Start the vLLM server in the background and export its URL (readiness is awaited later)."""
    port = peers.free_port()
    LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    try:
        _Peer.proc = peers.start_vllm_server(port, LOG_PATH)
    except Exception as exc:  # reported on the notebook that needs it
        _Peer.problem = f"could not start the vLLM server: {exc}"
        return
    _Peer.health_url = f"http://127.0.0.1:{port}/health"
    _Peer.old_env = os.environ.get("VLLM_BASE_URL")
    os.environ["VLLM_BASE_URL"] = f"http://127.0.0.1:{port}/v1"  # notebook kernels inherit it


def _stop_peer() -> None:
    """Stop the server this file started (its whole process group) and restore the env."""
    if _Peer.proc is None:
        return
    try:
        peers.stop(_Peer.proc)
    finally:
        _Peer.proc = None
        _Peer.ready = False
        if _Peer.old_env is None:
            os.environ.pop("VLLM_BASE_URL", None)
        else:
            os.environ["VLLM_BASE_URL"] = _Peer.old_env


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start nothing that is not needed
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before any notebook runs: plan a vLLM server for the vLLM notebook, or skip it."""
    wanted = [item for item in items if _needs_vllm(item)]
    if not wanted or os.environ.get("VLLM_BASE_URL") or config.option.collectonly:
        return  # nothing needs a server, or the caller gave one
    if not peers.vllm_available():
        missing = (
            "the vLLM CPU peer is not provisioned (.peers/vllm); run `make peers`, "
            "or set VLLM_BASE_URL to a running vLLM server"
        )
        if REQUIRE_PEERS:
            _Peer.problem = f"required peer missing: {missing}"  # fails the vLLM notebook
        else:
            for item in wanted:
                item.add_marker(pytest.mark.skip(reason=f"peer missing: {missing}"))
        return
    _Peer.needed = True
    _Peer.pending = len(wanted)
    only_notebooks = all(Path(str(item.fspath)).resolve().parent == NOTEBOOK_DIR for item in items)
    if only_notebooks:
        _start_peer()  # early, so the start overlaps the other notebooks


@dataclass(frozen=True)
class FixtureNotebook:
    """A notebook that talks to a protocol fixture when the caller gives no endpoint."""

    endpoint_var: str  # the endpoint the notebook reads; when set, no fixture is started
    start: Callable[[int, Path, str], subprocess.Popen]  # (port, log, GGUF path) -> process
    ready_path: str  # answers once the fixture has loaded its model and spec
    env: Callable[[str], dict[str, str]]  # the fixture's URL -> the kernel's environment


FIXTURE_NOTEBOOKS: dict[str, FixtureNotebook] = {
    "tgi.ipynb": FixtureNotebook(
        "TGI_BASE_URL", peers.start_tgi_fixture, "/health", lambda url: {"TGI_BASE_URL": url}
    ),
    "azure.ipynb": FixtureNotebook(
        "AZURE_OPENAI_ENDPOINT",
        peers.start_azure_fixture,
        "/__fixture__/violations",
        lambda url: {
            "AZURE_OPENAI_ENDPOINT": url,
            "AZURE_OPENAI_API_KEY": peers.AZURE_FIXTURE_KEY,
            "OPENAI_API_VERSION": peers.AZURE_API_VERSION,
            "AZURE_OPENAI_DEPLOYMENT": peers.AZURE_DEPLOYMENT,
        },
    ),
    "deepseek.ipynb": FixtureNotebook(
        "DEEPSEEK_API_BASE",
        peers.start_deepseek_fixture,
        "/__fixture__/state",
        lambda url: {"DEEPSEEK_API_BASE": url, "DEEPSEEK_API_KEY": "sk-fixture"},
    ),
    "gemini.ipynb": FixtureNotebook(
        "GEMINI_BASE_URL",
        peers.start_gemini_fixture,
        "/__fixture__/state",
        lambda url: {"GEMINI_BASE_URL": url, "GEMINI_API_KEY": peers.GEMINI_FIXTURE_KEY},
    ),
}
_FIXTURE: dict[str, Any] = {}  # the running fixture: "proc", and "env", what it replaced


def _start_fixture(name: str) -> None:
    """The protocol fixture for notebook ``name``, unless its endpoint variable is set."""
    spec = FIXTURE_NOTEBOOKS[name]
    if os.environ.get(spec.endpoint_var):
        return
    # tiktoken's encodings, provisioned offline by `make install`, for fixture and kernel.
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(peers.TIKTOKEN_DIR))
    port = peers.free_port()
    log = (
        REPO_ROOT / ".build" / "peer-logs" / f"{name.removesuffix('.ipynb')}_fixture_notebooks.log"
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = spec.start(port, log, peers.smollm2_gguf_path())
    url = f"http://127.0.0.1:{port}"
    env = spec.env(url)
    _FIXTURE.update(proc=proc, env={k: os.environ.get(k) for k in env})
    try:
        peers.wait_ready(url + spec.ready_path, proc, 120, log)
    except RuntimeError as exc:
        _stop_fixture()
        pytest.fail(f"the fixture for {name} did not start (log: {log}): {exc}", pytrace=False)
    os.environ.update(env)  # notebook kernels inherit it


def _stop_fixture() -> None:
    proc = _FIXTURE.pop("proc", None)
    if proc is not None:
        peers.stop(proc)
    for key, old in _FIXTURE.pop("env", {}).items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Just before the vLLM notebook: start the server if not yet started, and wait for it.
    Just before a protocol-fixture notebook: start its fixture."""
    if Path(str(item.fspath)).name in FIXTURE_NOTEBOOKS:
        _start_fixture(Path(str(item.fspath)).name)
        return
    if not _needs_vllm(item):
        return
    if _Peer.problem is not None:
        pytest.fail(_Peer.problem, pytrace=False)
    if not _Peer.needed or _Peer.ready:
        return
    if _Peer.proc is None:
        if os.environ.get("VLLM_BASE_URL"):
            return  # another fixture of this session provides a server: use it
        _start_peer()
        if _Peer.problem is not None:
            pytest.fail(_Peer.problem, pytrace=False)
    assert _Peer.proc is not None
    try:
        peers.wait_ready(_Peer.health_url, _Peer.proc, READY_TIMEOUT_S, LOG_PATH)
    except RuntimeError as exc:
        _Peer.problem = f"the vLLM server did not become ready (log: {LOG_PATH}): {exc}"
        _stop_peer()
        pytest.fail(_Peer.problem, pytrace=False)
    _Peer.ready = True


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Stop the server as soon as the last vLLM notebook has run (a fixture likewise)."""
    if Path(str(item.fspath)).name in FIXTURE_NOTEBOOKS:
        _stop_fixture()
    if _needs_vllm(item) and _Peer.needed:
        _Peer.pending -= 1
        if _Peer.pending <= 0:
            _stop_peer()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: stop the servers if they still run (an interrupted session)."""
    _stop_peer()
    _stop_fixture()
