"""A tiny vLLM-style OpenAI server that answers at once, for benchmarking client overhead.

Plain ``asyncio`` (a ``Protocol``, HTTP/1.1 with keep-alive), no web framework, so the server
adds as little and as steady a cost as possible. Routes:

* ``GET /v1/models``: one card, with ``max_model_len``;
* ``GET /health``: 200, empty body;
* ``POST /tokenize``: ``{prompt}`` or ``{messages}`` in, a deterministic count out;
* ``POST /v1/chat/completions``: a fixed short completion; with ``stream: true`` an SSE stream
  of a role chunk, ``CHUNKS`` small content chunks, a finish chunk, a usage chunk (when
  ``stream_options.include_usage``) and ``data: [DONE]``, sent as HTTP chunked encoding;
* ``GET /_stats``: how many requests each route has had (for the benchmark's own checks), and
  ``open_streams_max``, the most streams that were open at once.

``--stream-delay S`` spaces a stream's events S seconds apart (default 0: all at once), so that
many streams stay open together (``bench/serve.py``'s 1,000-stream phase); a client that leaves
mid-stream stops its stream.

Run ``python bench/fake_openai_server.py [--port N] [--stream-delay S]``; it prints ``PORT <n>``
once listening.
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


def _stream(model: str, include_usage: bool) -> list[bytes]:
    """The HTTP response of a stream as its parts: the head, one HTTP chunk per event, the end."""

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
    return [head, *(b"%x\r\n%s\r\n" % (len(d), d) for d in datas), b"0\r\n\r\n"]


_CACHE: dict[tuple[Any, ...], bytes] = {}


_PARTS: dict[tuple[Any, ...], list[bytes]] = {}


def _cached(key: tuple[Any, ...], build: Any) -> bytes:
    out = _CACHE.get(key)
    if out is None:
        out = _CACHE[key] = b"".join(build) if isinstance(build, list) else build()
    return out


def _cached_parts(key: tuple[Any, ...], build: Any) -> list[bytes]:
    out = _PARTS.get(key)
    if out is None:
        out = _PARTS[key] = build()
    return out


STATS: Counter[str] = Counter()
STREAM_DELAY = 0.0  # seconds between a stream's events (--stream-delay)
OPEN_STREAMS = 0


def handle(method: str, path: str, raw: bytes) -> bytes | list[bytes]:
    """The response to one request: bytes, or a stream's parts (a list) to send spaced out."""
    path = path.split("?", 1)[0]
    STATS[f"{method} {path}"] += 1
    if method == "GET":
        if path == "/v1/models":
            return MODELS_RESPONSE
        if path == "/health":
            return HEALTH_RESPONSE
        if path == "/_stats":
            return _response(200, _dump(dict(STATS)))
        if path == "/_stats/reset":
            STATS.clear()
            return _response(200, b"{}")
        if path == "/_stats/reset":
            STATS.clear()
            return _response(200, b"{}")
        return NOT_FOUND
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return _response(400, _dump({"error": {"message": "bad JSON", "code": 400}}))
    if path == "/v1/chat/completions":
        model = body.get("model") or MODEL
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            parts = _cached_parts(("stream", model, usage), lambda: _stream(model, usage))
            return parts if STREAM_DELAY > 0 else _cached(("whole", model, usage), parts)
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
        self.sending: asyncio.Task[None] | None = None  # a spaced-out stream being sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sending is not None:
            self.sending.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.sending is None:
            self.process()

    def process(self) -> None:
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
            out = handle(method, target, body)
            if isinstance(out, list):  # a spaced-out stream: the next request waits for it
                self.sending = asyncio.ensure_future(self.send_spaced(out, close))
                return
            self.transport.write(out)
            if close:
                self.transport.close()
                return

    async def send_spaced(self, parts: list[bytes], close: bool) -> None:
        global OPEN_STREAMS
        assert self.transport is not None
        OPEN_STREAMS += 1
        STATS["open_streams_max"] = max(STATS["open_streams_max"], OPEN_STREAMS)
        try:
            self.transport.write(parts[0] + parts[1])
            for part in parts[2:-1]:
                await asyncio.sleep(STREAM_DELAY)
                self.transport.write(part)
            self.transport.write(parts[-1])
        finally:
            OPEN_STREAMS -= 1
            self.sending = None
        if close:
            self.transport.close()
        elif not self.transport.is_closing():
            self.process()


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
    parser.add_argument(
        "--stream-delay", type=float, default=0.0, help="seconds between a stream's events"
    )
    args = parser.parse_args()
    STREAM_DELAY = args.stream_delay
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)
