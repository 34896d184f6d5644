"""A tiny vLLM-style OpenAI server that answers at once, for benchmarking client overhead.

Plain ``asyncio`` (a ``Protocol``, HTTP/1.1 with keep-alive), no web framework, so the server
adds as little and as steady a cost as possible. Routes:

* ``GET /v1/models``: one card, with ``max_model_len``;
* ``GET /health``: 200, empty body;
* ``POST /tokenize``: ``{prompt}`` or ``{messages}`` in, a deterministic count out;
* ``POST /v1/chat/completions``: a fixed short completion; with ``stream: true`` an SSE stream
  of a role chunk, ``CHUNKS`` small content chunks, a finish chunk, a usage chunk (when
  ``stream_options.include_usage``) and ``data: [DONE]``, sent as HTTP chunked encoding;
* ``GET /_stats``: how many requests each route has had (for the benchmark's own checks).

Run ``python bench/fake_openai_server.py [--port N]``; it prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import Any

MODEL = "bench/fake-model"
MAX_MODEL_LEN = 32768
CHUNKS = 20
CREATED = 1_700_000_000
COMPLETION_ID = "chatcmpl-bench"
PIECES = [f"w{i} " for i in range(CHUNKS)]
CONTENT = "".join(PIECES)
PROMPT_TOKENS = 12
COMPLETION_TOKENS = CHUNKS
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


def count_tokens(body: dict[str, Any]) -> int:
    """Deterministic stand-in for a tokenizer: 1 token per 4 characters, plus template tokens."""
    if "messages" in body:
        n = 3 if body.get("add_generation_prompt") else 1
        for m in body["messages"]:
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            n += 4 + len(content) // 4
        return n
    return 1 + len(body.get("prompt") or "") // 4


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, REASONS.get(status, b"Error"), content_type, len(body))
        + body
    )


MODELS_RESPONSE = _response(
    200,
    _dump(
        {
            "object": "list",
            "data": [
                {
                    "id": MODEL,
                    "object": "model",
                    "created": CREATED,
                    "owned_by": "vllm",
                    "root": MODEL,
                    "parent": None,
                    "max_model_len": MAX_MODEL_LEN,
                }
            ],
        }
    ),
)
HEALTH_RESPONSE = _response(200, b"")
NOT_FOUND = _response(404, _dump({"error": {"message": "not found", "code": 404}}))


def _completion(model: str) -> bytes:
    return _response(
        200,
        _dump(
            {
                "id": COMPLETION_ID,
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": CONTENT},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        ),
    )


def _stream(model: str, include_usage: bool) -> bytes:
    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    events = [chunk(delta({"role": "assistant", "content": ""}))]
    events += [chunk(delta({"content": p})) for p in PIECES]
    events.append(chunk(delta({}, "stop")))
    if include_usage:
        events.append(chunk([], USAGE))
    datas = [b"data: " + _dump(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas)
    return head + body + b"0\r\n\r\n"


_CACHE: dict[tuple[Any, ...], bytes] = {}


def _cached(key: tuple[Any, ...], build: Any) -> bytes:
    out = _CACHE.get(key)
    if out is None:
        out = _CACHE[key] = build()
    return out


STATS: Counter[str] = Counter()


def handle(method: str, path: str, raw: bytes) -> bytes:
    path = path.split("?", 1)[0]
    STATS[f"{method} {path}"] += 1
    if method == "GET":
        if path == "/v1/models":
            return MODELS_RESPONSE
        if path == "/health":
            return HEALTH_RESPONSE
        if path == "/_stats":
            return _response(200, _dump(dict(STATS)))
        return NOT_FOUND
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return _response(400, _dump({"error": {"message": "bad JSON", "code": 400}}))
    if path == "/v1/chat/completions":
        model = body.get("model") or MODEL
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _cached(("stream", model, usage), lambda: _stream(model, usage))
        return _cached(("chat", model), lambda: _completion(model))
    if path == "/tokenize":
        n = count_tokens(body)
        return _response(
            200, _dump({"count": n, "max_model_len": MAX_MODEL_LEN, "tokens": list(range(n))})
        )
    return NOT_FOUND


class HTTPProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            length = 0
            close = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(handle(method, target, body))
            if close:
                self.transport.close()
                return


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTPProtocol, host, port, backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)
