"""An OpenAI-protocol server in an ``httpx.MockTransport``, for the paths real peers cannot
provoke (a cut stream, a 429 with Retry-After, a malformed body). Counts every request."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE = "http://fake.invalid/v1"


def sse(events: list[Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = []
    if content is not None or finish is not None:
        delta = {"content": content} if content is not None else {}
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    out: dict[str, Any] = {
        "id": "c1",
        "model": "m",
        "object": "chat.completion.chunk",
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


def completion(content: str = "hello", finish: str | None = "stop") -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


@dataclass
class FakeServer:
    """Routes of a vLLM server; ``chat`` answers chat completions (a queue, last one repeats)."""

    window: int | None = 100
    chars_per_token: int = 1
    chat: list[httpx.Response] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    bodies: list[dict] = field(default_factory=list)
    tokenize: bool = True

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls[path] += 1
        body = json.loads(request.content) if request.content else {}
        if path == "/v1/models":
            card = {"id": "m", "object": "model"}
            if self.window:
                card["max_model_len"] = self.window
            return httpx.Response(200, json={"object": "list", "data": [card]})
        if path == "/health":
            return httpx.Response(200)
        if path == "/tokenize":
            if not self.tokenize:
                return httpx.Response(404, json={"detail": "Not Found"})
            if "prompt" in body:
                n = len(body["prompt"])
            else:
                n = 3 + sum(2 + len(m.get("content") or "") for m in body["messages"])
            return httpx.Response(
                200, json={"count": n, "max_model_len": self.window, "tokens": []}
            )
        if path in ("/v1/chat/completions", "/v1/completions"):
            self.bodies.append(body)
            if not self.chat:
                return httpx.Response(200, json=completion())
            return self.chat.pop(0) if len(self.chat) > 1 else self.chat[0]
        return httpx.Response(404, json={"detail": "Not Found"})

    def clients(self) -> dict[str, Any]:
        transport = httpx.MockTransport(self.handler)
        return {
            "base_url": BASE,
            "http_client": httpx.Client(transport=transport),
            "http_async_client": httpx.AsyncClient(transport=transport),
        }
