"""``multillm serve`` runs on jemalloc where it is installed (``server/allocator.py``): the choice,
the re-exec (same PID), what the running process really maps, and the refusals.

The memory this buys (RSS back after a burst of 1,000 streams) is measured by
``make bench-serve``, not here: a timed or sized test would be flaky on a shared machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from langchain_multillm.server.allocator import (
    DEFAULT_MALLOC_CONF,
    EXEC_MARK,
    exec_env,
    find_jemalloc,
)
from langchain_multillm.server.config import ConfigError, ServeConfig, config_from_env
from tests import peers
from tests.conftest import peer_missing
from tests.server.conftest import start_gateway

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


# ------------------------------------------------------------------ the choice


def test_auto_with_jemalloc_preloads_it_and_hands_python_objects_to_malloc() -> None:
    env = exec_env("auto", {"PATH": "/bin"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == LIB
    assert env["PYTHONMALLOC"] == "malloc"
    assert env["MALLOC_CONF"] == DEFAULT_MALLOC_CONF
    assert env[EXEC_MARK] == "1"
    assert env["PATH"] == "/bin"


def test_an_existing_preload_and_malloc_conf_are_kept() -> None:
    env = exec_env("jemalloc", {"LD_PRELOAD": "/opt/libother.so", "MALLOC_CONF": "narenas:1"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{LIB}:/opt/libother.so"
    assert env["MALLOC_CONF"] == "narenas:1"


@pytest.mark.parametrize(
    ("choice", "env"),
    [
        ("pymalloc", {}),  # asked not to
        ("auto", {"LD_PRELOAD": LIB, "PYTHONMALLOC": "malloc"}),  # already on it
        ("jemalloc", {EXEC_MARK: "1"}),  # the re-executed process never re-executes
    ],
)
def test_no_reexec_where_none_is_needed(choice: str, env: dict[str, str]) -> None:
    assert exec_env(choice, env, LIB) is None  # type: ignore[arg-type]


def test_auto_without_jemalloc_runs_on_pymalloc() -> None:
    assert exec_env("auto", {}, None) is None


def test_jemalloc_asked_for_but_missing_is_refused_naming_the_key_and_the_package() -> None:
    with pytest.raises(ConfigError) as info:
        exec_env("jemalloc", {}, None)
    assert info.value.field == "server.allocator"
    assert "libjemalloc2" in str(info.value) and "auto or pymalloc" in str(info.value)


def test_config_key_and_environment_variable() -> None:
    cfg = ServeConfig.model_validate(
        {"server": {"allocator": "pymalloc"}, "models": [{"name": "m", "model": "llamacpp:"}]}
    )
    assert cfg.server.allocator == "pymalloc"
    assert config_from_env({"MULTILLM_ALLOCATOR": "jemalloc"}).server.allocator == "jemalloc"
    with pytest.raises(ConfigError) as info:
        config_from_env({"MULTILLM_ALLOCATOR": "tcmalloc"})
    assert info.value.field == "MULTILLM_ALLOCATOR"
    assert "'auto', 'jemalloc' or 'pymalloc'" in str(info.value)


# ------------------------------------------------------------------ the real process


@pytest.fixture(scope="module")
def jemalloc() -> str:
    path = find_jemalloc()
    if path is None:
        peer_missing(
            "libjemalloc.so.2 (Debian's libjemalloc2); `make test-server` installs it "
            "(scripts/peers/setup_jemalloc.sh)"
        )
    assert path is not None
    return path


def _config() -> dict[str, object]:
    # a model behind a closed port: the gateway serves (and /ready says not ready)
    dead = f"http://127.0.0.1:{peers.free_port()}/v1"
    return {
        "server": {"startup_timeout_s": 2},
        "models": [{"name": "m", "model": "vllm-server:m", "params": {"base_url": dead}}],
    }


def _allocator_metric(url: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r'^multillm_allocator\{allocator="(\w+)"\} 1\.0$', text, re.MULTILINE)
    assert len(found) == 1, text[:2000]
    return found[0]


def test_serve_reexecutes_itself_on_jemalloc_keeping_its_pid(
    server_deps: None, jemalloc: str, tmp_path: Path
) -> None:
    gw = start_gateway(_config(), tmp_path / "serve.yaml", name="gateway-jemalloc")
    try:
        pid = gw.proc.pid  # the process the test started answers: execve kept the PID
        maps = Path(f"/proc/{pid}/maps").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert jemalloc in maps
        assert b"PYTHONMALLOC=malloc" in environ
        assert _allocator_metric(gw.url) == "jemalloc"
        assert "memory allocator: jemalloc" in gw.log.read_text()
    finally:
        peers.stop(gw.proc)


def test_serve_with_allocator_pymalloc_stays_on_it(server_deps: None, tmp_path: Path) -> None:
    gw = start_gateway(
        _config(),
        tmp_path / "serve.yaml",
        name="gateway-pymalloc",
        args=("--allocator", "pymalloc"),
        env={"LD_PRELOAD": "", "PYTHONMALLOC": ""},
    )
    try:
        assert "libjemalloc" not in Path(f"/proc/{gw.proc.pid}/maps").read_text()
        assert _allocator_metric(gw.url) == "pymalloc"
    finally:
        peers.stop(gw.proc)
