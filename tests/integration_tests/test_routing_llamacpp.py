"""ChatRouter over real peers: two llama_cpp.server replicas and the embedded model.

* one replica killed with SIGKILL while requests are in flight: every request that had not
  started streaming completes elsewhere, every stream that had started on it ends with a typed
  error (never a hang, never a cut answer returned as whole), its breaker opens within N
  failures, and once it is started again it is back in rotation within one cooldown;
* a small window (n_ctx 256) and a large one (2048) behind one router: prompts over the small
  window go to the large one with no generation asked of the small one.

Nothing here depends on the tiny model's words.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from pydantic import BaseModel, PrivateAttr

from langchain_multillm import ChatLlamaCpp, ChatRouter, ChatVLLMServer
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError, MultiLLMError
from tests import peers
from tests.conftest import LOG_DIR

pytestmark = [pytest.mark.llamacpp, pytest.mark.peer, pytest.mark.timeout(900)]

# SmolLM2's <|endoftext|> and <|im_end|> banned on the replicas: their streams last max_tokens.
NO_EOS = {"0": -100, "2": -100}
THRESHOLD = 2
COOLDOWN_S = 8.0
INVOKES = 192  # + STREAMS: 200 in flight
STREAMS = 8


def start_replica(port: int, log: Path) -> subprocess.Popen:
    """llama_cpp.server as tests/peers.py starts it, one thread (three engines share 2 cores)."""
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", peers.smollm2_gguf_path(),
        "--model_alias", peers.SERVED_MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(peers.CONTEXT_WINDOW),
        "--n_threads", "1",
        "--n_threads_batch", "1",
        "--seed", str(peers.fixture_seed()),
        # requests wait their turn (by default a new request interrupts the one running)
        "--interrupt_requests", "False",
    ]  # fmt: skip
    proc = peers._popen(cmd, log)
    peers.wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, 120, log)
    return proc


def replica(port: int) -> Any:
    return ChatVLLMServer(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=peers.SERVED_MODEL_NAME,
        context_window=peers.CONTEXT_WINDOW,
        max_retries=0,
        timeout=300,
        temperature=0,
    ).bind(logit_bias=NO_EOS)


def where(msg: Any) -> str:
    return msg.response_metadata["router_candidate"]


def state(router: ChatRouter, name: str) -> Any:
    return next(s for s in router.state() if s.name == name)


class Replicas:
    """Two llama_cpp.server replicas on free ports; one may be killed and started again."""

    def __init__(self) -> None:
        self.ports = [peers.free_port(), peers.free_port()]
        self.logs = [LOG_DIR / f"routing_replica_{i}.log" for i in range(2)]
        self.procs: list[subprocess.Popen | None] = [None, None]

    def start(self, i: int) -> None:
        self.procs[i] = start_replica(self.ports[i], self.logs[i])

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                peers.stop(proc)


@pytest.fixture
def replicas(llama_cpp_available: str) -> Iterator[Replicas]:
    r = Replicas()
    try:
        r.start(0)
        r.start(1)
        yield r
    finally:
        r.stop_all()


async def test_replica_killed_mid_flight(replicas: Replicas, llama_cpp_available: str) -> None:
    local = ChatLlamaCpp(
        model_path=llama_cpp_available, n_ctx=peers.CONTEXT_WINDOW, n_threads=1, temperature=0
    )
    router = ChatRouter(
        models=[replica(replicas.ports[0]), replica(replicas.ports[1]), local],
        names=["a", "b", "local"],
        strategy="round_robin",
        failure_threshold=THRESHOLD,
        cooldown_s=COOLDOWN_S,
        backoff_s=0.05,
    )
    started_on_a = asyncio.Event()
    killed_at: list[float] = []

    async def invoke(i: int) -> AIMessage:
        return await router.ainvoke(f"Say a number near {i}.", max_tokens=4)

    async def stream(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {"where": None, "chunks": 0, "error": None, "finish": None}
        try:
            async for chunk in router.astream(f"Count from {i}.", max_tokens=160):
                if out["where"] is None:
                    out["where"] = chunk.response_metadata["router_candidate"]
                    out["first_at"] = time.monotonic()
                    if out["where"] == "a":
                        started_on_a.set()
                out["chunks"] += 1
                out["finish"] = chunk.response_metadata.get("finish_reason") or out["finish"]
        except Exception as exc:
            out["error"] = exc
        out["ended_at"] = time.monotonic()
        return out

    tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
    tasks += [asyncio.create_task(invoke(i)) for i in range(INVOKES)]
    await asyncio.wait_for(started_on_a.wait(), 240)
    calls_at_kill = state(router, "a").calls
    in_flight_at_kill = state(router, "a").in_flight
    replicas.kill(0)
    killed_at.append(time.monotonic())
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 600)
    streams, invokes = results[:STREAMS], results[STREAMS:]

    # every request that was not streaming completed, none of them on the dead replica after
    # the kill (those in flight there moved on)
    for r in invokes:
        assert isinstance(r, AIMessage), r
    # every stream: ended whole (a finish reason), or with a typed error if it was cut on a
    for s in streams:
        assert not isinstance(s, BaseException), s
        if s["error"] is not None:
            assert isinstance(s["error"], MultiLLMError), s["error"]
            assert s["where"] == "a" and s["first_at"] < s["ended_at"]
        else:
            assert s["finish"] is not None, s
            if s["where"] == "a":
                assert s["ended_at"] <= killed_at[0]
    cut = [s for s in streams if s["error"] is not None]
    assert cut, "no stream was running on the killed replica"

    a = state(router, "a")
    assert a.times_opened >= 1 and a.breaker in ("open", "probing")
    # within N: at most N calls were sent to it after the kill, whatever was in flight there
    assert a.calls - calls_at_kill <= THRESHOLD
    assert a.in_flight == 0
    print(
        f"\nkill: {INVOKES} invokes + {STREAMS} streams in flight; a had {in_flight_at_kill} "
        f"in flight, {len(cut)} streams cut with {[type(s['error']).__name__ for s in cut]}, "
        f"{a.calls - calls_at_kill} calls sent to a after the kill, failures {a.failures}; "
        f"answered by: { {n: sum(where(r) == n for r in invokes) for n in ('a', 'b', 'local')} }"
    )

    # while open, nothing goes to a
    for i in range(3):
        assert where(await router.ainvoke(f"Hi {i}", max_tokens=2)) != "a"

    replicas.start(0)
    ready_at = time.monotonic()
    while True:
        msg = await router.ainvoke("Hi", max_tokens=2)
        if where(msg) == "a":
            break
        assert time.monotonic() - ready_at < COOLDOWN_S + 20, router.state()
        await asyncio.sleep(0.2)
    back_after = time.monotonic() - ready_at
    assert state(router, "a").breaker == "closed"
    print(f"a back in rotation {back_after:.1f} s after it was ready again (cooldown {COOLDOWN_S})")
    assert back_after <= COOLDOWN_S + 10  # a cooldown, plus the calls that find it


class CountingLlamaCpp(ChatLlamaCpp):
    """ChatLlamaCpp that counts the generations it is asked for (the routing test's
    ``zero requests to the small window``)."""

    _generations: int = PrivateAttr(default=0)

    def _gen(self, req: Any, eng: Any) -> Any:  # every generation, invoke or stream, sync or async
        self._generations += 1
        return super()._gen(req, eng)


def test_small_and_large_window(llama_cpp_available: str) -> None:
    small = CountingLlamaCpp(
        model_path=llama_cpp_available, n_ctx=256, n_threads=1, max_tokens=8, temperature=0
    )
    large = CountingLlamaCpp(
        model_path=llama_cpp_available, n_ctx=2048, n_threads=1, max_tokens=8, temperature=0
    )
    router = ChatRouter(models=[small, large], names=["small", "large"], strategy="ordered")
    short = "Say hi."
    long_prompt = "Summarize: " + "the river runs past the old mill and on to the sea. " * 40
    assert small.count_tokens(long_prompt) > 256 and large.count_tokens(long_prompt) < 2048 - 8

    assert where(router.invoke(short)) == "small"
    assert small._generations == 1
    for _ in range(2):
        assert where(router.invoke(long_prompt)) == "large"
    chunks = list(router.stream(long_prompt))
    assert chunks[0].response_metadata["router_candidate"] == "large"
    assert small._generations == 1 and large._generations == 3
    assert router.check_fit(long_prompt).context_window == 2048
    assert router.check_fit(short).context_window == 256
    assert router.get_limits().context_window == 2048
    # over both windows: refused before anything is sent, naming both limits
    with pytest.raises(ContextWindowExceededError, match=r"small: limit 256.*large: limit 2048"):
        router.invoke(long_prompt * 8)
    assert small._generations == 1 and large._generations == 3


class Verdict(BaseModel):
    """Whether the statement holds."""

    holds: bool


# A tool whose arguments are one boolean: the forced call's JSON is short whatever the model.
LAMP = {
    "type": "function",
    "function": {
        "name": "set_lamp",
        "description": "Turn the lamp on or off.",
        "parameters": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
        },
    },
}


def test_tools_and_structured_output_through_the_router(llama_cpp_available: str) -> None:
    """``bind_tools`` and ``with_structured_output`` on a router: the tools go with the call to
    the candidate it is routed to and come back as its tool call; the answer is parsed; a
    ``tool_choice`` naming no bound tool is refused before anything is sent."""
    # Room for the longest JSON the grammars admit, whatever tokens the model picks: llama.cpp's
    # JSON-schema grammars allow at most one space at each place, so the longest here,
    # '{ "name" : "set_lamp" , "arguments" : { "on" : false } }', is 56 characters (so at
    # most 56 tokens); the small window still takes a short prompt with it.
    small = CountingLlamaCpp(
        model_path=llama_cpp_available, n_ctx=256, n_threads=1, max_tokens=64, temperature=0
    )
    large = CountingLlamaCpp(
        model_path=llama_cpp_available, n_ctx=2048, n_threads=1, max_tokens=64, temperature=0
    )
    router = ChatRouter(models=[small, large], names=["small", "large"], strategy="ordered")
    long_prompt = "Summarize: " + "the river runs past the old mill and on to the sea. " * 40

    msg = router.bind_tools([LAMP], tool_choice="set_lamp").invoke("Turn the lamp on.")
    assert where(msg) == "small"
    assert [call["name"] for call in msg.tool_calls] == ["set_lamp"]
    assert isinstance(msg.tool_calls[0]["args"]["on"], bool)
    # over the small window: the tools go with the call to the large one
    msg = asyncio.run(
        router.bind_tools([LAMP], tool_choice="required").ainvoke(long_prompt + " Lamp on.")
    )
    assert where(msg) == "large" and [c["name"] for c in msg.tool_calls] == ["set_lamp"]

    for method in ("json_schema", "function_calling"):
        verdict = router.with_structured_output(Verdict, method=method).invoke("Is ice cold?")
        assert isinstance(verdict, Verdict), method
    raw = router.with_structured_output(Verdict, include_raw=True).invoke(long_prompt)
    assert isinstance(raw["parsed"], Verdict) and where(raw["raw"]) == "large"

    before = small._generations + large._generations
    with pytest.raises(InvalidInputError, match="tool_choice"):
        router.bind_tools([LAMP], tool_choice="another_tool")
    assert small._generations + large._generations == before
