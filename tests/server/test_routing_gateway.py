"""The gateway serving a routed model: ``replicas`` and ``fallbacks`` in the config.

Two llama_cpp.server replicas of one model (``vllm-server:`` with a base_url each) behind one
name, with the embedded model as its fallback; one replica killed with SIGKILL while requests
are in flight through the gateway:

* every request that was not streaming completes (on the other replica);
* every stream ends whole, or with an error the ``openai`` SDK raises (the gateway's error
  event), never a hang;
* ``/ready`` and ``/metrics`` show the replica's breaker open, opened within N failures;
* once the replica is started again it is back in rotation within one cooldown.

Nothing here depends on the tiny model's words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import peers
from tests.integration_tests.test_routing_llamacpp import NO_EOS, Replicas
from tests.server.conftest import Gateway, embedded, start_gateway

pytestmark = pytest.mark.timeout(900)

THRESHOLD = 2
COOLDOWN_S = 6.0
INVOKES = 194  # + STREAMS: 200 in flight
STREAMS = 6
A = "smollm2/smollm2#0"  # the first replica's name in /ready and /metrics


def deployment(port: int) -> dict[str, Any]:
    return {
        "model": f"vllm-server:{peers.SERVED_MODEL_NAME}",
        "params": {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "context_window": peers.CONTEXT_WINDOW,
            "max_retries": 0,
            "timeout": 300,
            "temperature": 0,
            # a replica busy generating on 2 shared cores may answer /v1/models slowly
            "health_timeout": 30,
        },
    }


@pytest.fixture
def routed(
    server_deps: None, llama_cpp_available: str, tmp_path: Path
) -> Iterator[tuple[Gateway, Replicas]]:
    replicas = Replicas()
    gw: Gateway | None = None
    try:
        replicas.start(0)
        replicas.start(1)
        config = {
            "server": {"health_cache_s": 0.2},
            "models": [
                {
                    "name": "smollm2",
                    **deployment(replicas.ports[0]),
                    "replicas": [deployment(replicas.ports[1])],
                    "fallbacks": ["local"],
                    "routing": {
                        "strategy": "round_robin",
                        "failure_threshold": THRESHOLD,
                        "cooldown_s": COOLDOWN_S,
                    },
                    "max_concurrency": 256,
                    "max_queue": 1024,
                },
                embedded("local", params={"n_threads": 1}),
            ],
        }
        gw = start_gateway(config, tmp_path / "serve.yaml", name="gateway-routing")
        yield gw, replicas
    finally:
        if gw is not None:
            peers.stop(gw.proc)
        replicas.stop_all()


def replica_state(gw: Gateway, name: str) -> dict[str, Any]:
    body = httpx.get(f"{gw.url}/ready", timeout=60).json()
    return next(r for r in body["models"]["smollm2"]["replicas"] if r["name"] == name)


def replica_calls(gw: Gateway, name: str) -> float:
    """Calls sent to a replica, from /metrics (no health check runs)."""
    line = f'multillm_replica_calls{{model="smollm2",replica="{name}"}} '
    text = httpx.get(f"{gw.url}/metrics", timeout=30).text
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def test_replica_killed_through_the_gateway(routed: tuple[Gateway, Replicas]) -> None:
    gw, replicas = routed
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=300)
    first_chunks = 0
    two_started = asyncio.Event()

    async def invoke(i: int) -> Any:
        return await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Say a number near {i}."}],
            max_tokens=4,
        )

    async def stream(i: int) -> dict[str, Any]:
        nonlocal first_chunks
        out: dict[str, Any] = {"chunks": 0, "finish": None, "error": None}
        try:
            s = await client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": f"Count from {i}."}],
                max_tokens=200,
                logit_bias=NO_EOS,
                stream=True,
            )
            async for chunk in s:
                if out["chunks"] == 0:
                    first_chunks += 1
                    if first_chunks >= 2:
                        two_started.set()
                out["chunks"] += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    out["finish"] = chunk.choices[0].finish_reason
        except Exception as exc:
            out["error"] = exc
        return out

    async with client:
        tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
        tasks += [asyncio.create_task(invoke(i)) for i in range(INVOKES)]
        await asyncio.wait_for(two_started.wait(), 300)
        calls_at_kill = await asyncio.to_thread(replica_calls, gw, A)
        replicas.kill(0)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 600)
        streams, invokes = results[:STREAMS], results[STREAMS:]

        for r in invokes:  # every request that was not streaming completed
            assert not isinstance(r, BaseException), r
            assert r.choices[0].finish_reason is not None
        cut = []
        for s in streams:
            assert not isinstance(s, BaseException), s
            if s["error"] is None:
                assert s["finish"] is not None, s  # ended whole
            else:
                assert isinstance(s["error"], openai.APIError), s["error"]  # typed, not cut
                assert not isinstance(s["error"], openai.APIStatusError), s["error"]  # midway
                assert s["finish"] is None
                cut.append(s)
        assert cut, "no stream was running on the killed replica"

        a = await asyncio.to_thread(replica_state, gw, A)
        assert a["breaker"] in ("open", "probing") and a["times_opened"] >= 1
        assert a["calls"] - calls_at_kill <= THRESHOLD  # opened within N failures
        metrics = httpx.get(f"{gw.url}/metrics", timeout=30).text
        assert f'multillm_replica_breaker{{model="smollm2",replica="{A}"}} 1.0' in metrics
        assert httpx.get(f"{gw.url}/ready", timeout=60).status_code == 200  # B is ready
        print(
            f"\ngateway kill: {INVOKES} requests + {STREAMS} streams in flight, {len(cut)} "
            f"stream(s) cut with {[type(s['error']).__name__ for s in cut]}, "
            f"{a['calls'] - calls_at_kill} calls to the dead replica after the kill, "
            f"failures {a['failures']}"
        )

        replicas.start(0)
        ready_at = time.monotonic()
        while True:
            await invoke(0)
            state = await asyncio.to_thread(replica_state, gw, A)
            if state["breaker"] == "closed":
                break
            assert time.monotonic() - ready_at < COOLDOWN_S + 20, state
            await asyncio.sleep(0.2)
        back_after = time.monotonic() - ready_at
        calls = state["calls"]
        for i in range(4):
            await invoke(i)
        assert (await asyncio.to_thread(replica_state, gw, A))["calls"] > calls
        print(f"replica back in rotation {back_after:.1f} s after it was ready again")
        assert back_after <= COOLDOWN_S + 10


# ---- the config (no server started) ----


def test_routing_config_is_checked_naming_the_key(tmp_path: Path) -> None:
    import yaml

    from langchain_multillm.server.config import ConfigError, load_config

    def config(models: list[dict[str, Any]]) -> Path:
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump({"models": models}))
        return path

    base = {"name": "m", **deployment(1)}
    with pytest.raises(ConfigError, match=r"models\[0\]\.fallbacks\[0\].*'nope'"):
        load_config(config([{**base, "fallbacks": ["nope"]}]))
    with pytest.raises(ConfigError, match=r"models\[0\]\.fallbacks\[0\]"):
        load_config(config([{**base, "fallbacks": ["m"]}]))
    with pytest.raises(ConfigError, match="replicas"):
        load_config(config([{**base, "replicas": [{"model": "nope:x"}]}]))
    with pytest.raises(ConfigError, match="strategy"):
        load_config(config([{**base, "routing": {"strategy": "fastest"}}]))
    with pytest.raises(ConfigError, match="only chat models are routed"):
        load_config(config([{**base, "kind": "completion", "replicas": [deployment(2)]}]))
    # a replica's key is a secret like the model's own
    secret = "sk-replica-secret-1234"
    replica = {"model": "vllm-server:m", "params": {"base_url": "http://127.0.0.1:2/v1",
                                                     "api_key": secret}}  # fmt: skip
    loaded = load_config(config([{**base, "replicas": [replica]}]))
    assert secret in loaded.secrets
    assert loaded.with_overrides(port=9000).models[0].replicas[0].params["api_key"] == secret


def test_routed_model_is_built_and_its_state_shown(tmp_path: Path) -> None:
    from langchain_multillm import ChatRouter
    from langchain_multillm.server.app import Gateway as App
    from langchain_multillm.server.config import ConfigError, ServeConfig

    models = [
        {"name": "m", **deployment(1), "replicas": [deployment(2)], "fallbacks": ["n"],
         "routing": {"strategy": "weighted", "weights": [3, 1], "cooldown_s": 7}},
        {"name": "n", **deployment(3)},
    ]  # fmt: skip
    app = App(ServeConfig.model_validate({"models": models}))
    outer = app.models["m"].model
    assert isinstance(outer, ChatRouter) and outer.strategy == "ordered"
    names = [s.name for s in outer.state(nested=True)]
    assert names == ["m", "m/m#0", "m/m#1", "n"]
    assert not isinstance(app.models["n"].model, ChatRouter)
    bad = [{**models[0], "routing": {"strategy": "weighted", "weights": [1]}}, models[1]]
    with pytest.raises(ConfigError, match=r"models\[0\]\.routing.*weights"):
        App(ServeConfig.model_validate({"models": bad}))
