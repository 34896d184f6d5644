"""Server settings, on the app itself (``create_app`` through httpx's ASGI transport, with the
embedded model): streams answered whole, the output guard's JSON, forced usage, the body limit,
a full queue; and ``multillm serve`` with no config at all, two workers, serving SmolLM2."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from langchain_multillm.server.config import ServeConfig
from tests import peers
from tests.server.conftest import embedded

pytestmark = pytest.mark.timeout(300)

HI = [{"role": "user", "content": "Say hi."}]


def app_for(server: dict[str, Any] | None = None, **model: Any) -> Any:
    from langchain_multillm.server.app import create_app

    config = ServeConfig.model_validate({"server": server or {}, "models": [embedded(**model)]})
    return create_app(config)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.invalid", timeout=120
    )


def payloads(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


STREAM = {"model": "smollm2", "messages": HI, "max_tokens": 3, "stream": True}


async def test_disable_streaming_sends_the_whole_answer_as_one_chunk(
    llama_cpp_available: str,
) -> None:
    async with client_for(app_for({"disable_streaming": True})) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={**STREAM, "stream_options": {"include_usage": True}, "data": {"k": 1}},
        )
        whole = await c.post(
            "/v1/chat/completions", json={**STREAM, "stream": False, "temperature": 0}
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = payloads(r.text)
    assert events[-1] == "[DONE]"
    content, finish, usage = (json.loads(e) for e in events[:-1])
    assert content["choices"][0]["delta"]["role"] == "assistant"
    assert (
        content["choices"][0]["delta"]["content"]
        == whole.json()["choices"][0]["message"]["content"]
    )
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage["usage"] == whole.json()["usage"]
    assert r.text.rstrip().endswith('json: {"k":1}')


async def test_output_guard_answers_a_stream_as_json(llama_cpp_available: str) -> None:
    async with client_for(app_for({"output_guard": True})) as c:
        r = await c.post("/v1/chat/completions", json={**STREAM, "data": {"k": [1]}})
        text = await c.post(
            "/v1/completions",
            json={"model": "text", "prompt": "Once", "max_tokens": 2, "stream": True},
        )
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["data"] == {"k": [1]}
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert text.status_code == 404  # no completion model configured here


async def test_force_include_usage(llama_cpp_available: str) -> None:
    async with client_for(app_for({"force_include_usage": True})) as c:
        r = await c.post("/v1/chat/completions", json=STREAM)
    last = json.loads(payloads(r.text)[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] <= 3


async def test_the_body_limit(llama_cpp_available: str) -> None:
    async with client_for(app_for({"max_request_bytes": 2048})) as c:
        big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * 4000}]}
        r = await c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}]}'

        r = await c.post("/v1/chat/completions", content=chunked())
        assert r.status_code == 413
        assert r.json()["error"]["param"] == "body"


async def test_a_full_queue_is_a_429_with_retry_after(llama_cpp_available: str) -> None:
    app = app_for(max_concurrency=1, max_queue=0)
    limiter = app.state.gateway.models["smollm2"].limiter
    await limiter.acquire()  # a call in flight
    try:
        async with client_for(app) as c:
            r = await c.post("/v1/chat/completions", json={**STREAM, "stream": False})
    finally:
        limiter.release()
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"


async def test_without_keys_no_key_is_asked_and_the_schema_says_so(
    llama_cpp_available: str,
) -> None:
    async with client_for(app_for()) as c:
        assert (await c.get("/v1/models")).status_code == 200
        doc = (await c.get("/openapi.json")).json()
    assert "securitySchemes" not in doc["components"]


def test_serve_alone_serves_smollm2_with_two_workers(
    server_deps: None, llama_cpp_available: str, tmp_path: Any
) -> None:
    """No config file and no LLM_* variables: the embedded model, named smollm2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "MULTILLM_"))}
    port = peers.free_port()
    log = tmp_path / "serve-alone.log"
    proc = peers._popen(
        [
            sys.executable,
            "-m",
            "langchain_multillm.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        log,
        env,
    )
    try:
        peers.wait_ready(f"http://127.0.0.1:{port}/ready", proc, 180, log)
        url = f"http://127.0.0.1:{port}"
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("smollm2", 2048)]
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "smollm2", "messages": HI, "max_tokens": 2},
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    finally:
        peers.stop(proc)
