"""A fault-injecting reverse proxy on 127.0.0.1, in front of one HTTP peer.

The contract suite points every HTTP model at one of these instead of at its peer, so the same
instrument works for every protocol: it logs each request (method, path, time, status), and
faults queued by a test change what the next matching requests get:

* :meth:`FaultProxy.respond`: answer the next ``times`` matching requests itself (a status,
  headers, a body, or a body made from the request, e.g. a 401 that echoes the credential);
* :meth:`FaultProxy.strip_usage`: forward the next matching stream without its token usage
  (a server that leaves usage out of streams);
* :meth:`FaultProxy.cut`: forward the next matching stream until its first event that carries
  text (or, at the latest, until the event that would finish it), then end it: ``"eof"`` ends the
  body cleanly (a stream that just stops), ``"abort"`` drops the connection mid-body.

Everything else is forwarded as it is (``accept-encoding: identity``, so streamed events can be
read). A raw ASGI app on uvicorn, in a daemon thread with its own event loop; no control routes:
the test talks to the object.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

# A POST that makes the model generate, in every protocol of the table: OpenAI chat (vLLM, TGI's
# Messages API, DeepSeek, Azure) and completions (vLLM), TGI's generate routes, Gemini's
# generateContent.
GENERATION = re.compile(r"(/completions|/generate|/generate_stream|:generateContent|"
                        r":streamGenerateContent)$")  # fmt: skip
# A streamed event that carries generated text (OpenAI ``content``, Gemini ``text``), and one
# that finishes a stream.
TEXT_EVENT = re.compile(rb'"(?:content|text)"\s*:\s*"(?:[^"\\]|\\.)')
FINISH_EVENT = re.compile(rb'"(?:finish_reason|finishReason)"\s*:\s*"|\[DONE\]')
EVENT_END = re.compile(rb"\r?\n\r?\n")
HOP_BY_HOP = {
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "host",
    "accept-encoding",
}


@dataclass
class Hit:
    """One request the proxy received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None
    faulted: str | None = None

    @property
    def generation(self) -> bool:
        return self.method == "POST" and bool(GENERATION.search(self.path))


Match = Callable[[Hit], bool]


def generation(hit: Hit) -> bool:
    return hit.generation


@dataclass
class Fault:
    match: Match
    kind: str  # "respond" | "cut" | "strip_usage"
    times: int | None = 1  # None: until cleared
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Callable[[Hit], bytes] = b""
    mode: str = "eof"


class _Abort(Exception):
    """Raised inside the app to drop a connection in the middle of a body."""


class FaultProxy:
    """See the module docstring. ``url`` is ``http://127.0.0.1:PORT`` (no path)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.hits: list[Hit] = []
        self.errors: list[str] = []  # the proxy's own failures (never an injected fault)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            log_level="critical",  # an injected abort is logged as an app error: not news
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
            name=f"contract-proxy-{self.url}",
        )  # fmt: skip

    # ---- life cycle ----
    def start(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the contract proxy for {self.upstream} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    # ---- what tests use ----
    def reset(self) -> None:
        """Forget the log and every queued fault."""
        with self._lock:
            self.hits.clear()
            self._faults.clear()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def respond(
        self,
        status: int,
        *,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[Hit], bytes] = b"",
        match: Match = generation,
    ) -> None:
        """Answer the next ``times`` requests that ``match`` (None: all, until cleared)."""
        with self._lock:
            self._faults.append(Fault(match, "respond", times, status, dict(headers or {}), body))

    def cut(self, mode: str = "eof", *, match: Match = generation) -> None:
        """Cut the next matching stream after its first text event (see the module docstring)."""
        assert mode in ("eof", "abort")
        with self._lock:
            self._faults.append(Fault(match, "cut", 1, mode=mode))

    def strip_usage(self, *, times: int | None = 1, match: Match = generation) -> None:
        """Forward the next matching streams with ``usage`` taken out of every event (an event
        that carried only the usage is left out)."""
        with self._lock:
            self._faults.append(Fault(match, "strip_usage", times))

    def log(self, match: Match | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if match is None or match(h)]

    def count(self, match: Match | None = None) -> int:
        return len(self.log(match))

    # ---- the app ----
    def _take(self, hit: Hit) -> Fault | None:
        with self._lock:
            self.hits.append(hit)
            for fault in self._faults:
                if fault.match(hit):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    hit.faulted = fault.kind
                    return fault
        return None

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        hit = Hit(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=b"".join(chunks),
            at=time.monotonic(),
        )
        fault = self._take(hit)
        if fault is not None and fault.kind == "respond":
            body = fault.body(hit) if callable(fault.body) else fault.body
            hit.status = fault.status
            out = {"content-type": "application/json", **fault.headers}
            await send(
                {
                    "type": "http.response.start",
                    "status": fault.status,
                    "headers": [(k.encode(), v.encode()) for k, v in out.items()],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self._forward(hit, send, fault)
        except _Abort:
            raise
        except Exception as exc:  # the proxy's own failure: the test fixture reports it
            self.errors.append(f"{hit.method} {hit.path}: {type(exc).__name__}: {exc}")
            raise

    async def _forward(self, hit: Hit, send: Any, fault: Fault | None) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(600.0), trust_env=False)
        url = self.upstream + hit.path + (f"?{hit.query}" if hit.query else "")
        headers = {k: v for k, v in hit.headers.items() if k not in HOP_BY_HOP}
        headers["accept-encoding"] = "identity"
        request = self._client.build_request(hit.method, url, headers=headers, content=hit.body)
        response = await self._client.send(request, stream=True)
        hit.status = response.status_code
        try:
            out = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.items()
                if k.lower() not in HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out})  # fmt: skip
            if fault is not None and fault.kind == "strip_usage":
                await self._strip_usage(response, send)
                return
            if fault is None or fault.kind != "cut":
                async for piece in response.aiter_raw():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            await self._cut(response, send, fault.mode)
        finally:
            await response.aclose()

    async def _cut(self, response: httpx.Response, send: Any, mode: str) -> None:
        buffer = b""
        async for piece in response.aiter_raw():
            buffer += piece
            while True:
                end = EVENT_END.search(buffer)
                if end is None:
                    break
                event, buffer = buffer[: end.end()], buffer[end.end() :]
                if FINISH_EVENT.search(event):
                    return await self._end(send, mode)
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if TEXT_EVENT.search(event):
                    return await self._end(send, mode)
        await self._end(send, mode)

    async def _strip_usage(self, response: httpx.Response, send: Any) -> None:
        buffer = b""
        async for piece in response.aiter_raw():
            buffer += piece
            while (end := EVENT_END.search(buffer)) is not None:
                event, buffer = buffer[: end.end()], buffer[end.end() :]
                event = _without_usage(event)
                if event:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": buffer})

    @staticmethod
    async def _end(send: Any, mode: str) -> None:
        if mode == "abort":
            await asyncio.sleep(0.05)  # let the forwarded event leave first
            raise _Abort("contract proxy: connection dropped mid-stream (injected)")
        await send({"type": "http.response.body", "body": b""})


def _without_usage(event: bytes) -> bytes:
    """An SSE event without ``usage`` in its JSON data (b"" where the usage was all it said)."""
    lines = event.split(b"\n")
    for i, line in enumerate(lines):
        if not line.startswith(b"data:"):
            continue
        try:
            data = json.loads(line[5:])
        except ValueError:
            continue  # [DONE]
        if not isinstance(data, dict) or "usage" not in data:
            continue
        data.pop("usage")
        if not data.get("choices"):
            return b""
        lines[i] = b"data: " + json.dumps(data).encode()
    return b"\n".join(lines)
