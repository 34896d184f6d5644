"""Async HTTP clients against an upstream that answers at once: requests/s, p50 and p99.

The HTTP backends' async path (``ainvoke``, ``abatch``, ``astream``) is the ceiling of anything
built on them, a gateway included. This measures the candidate async clients and this package's
``ChatVLLMServer`` against ``bench/fake_openai_server.py`` (plain asyncio, HTTP/1.1 keep-alive,
its own process on a free port of 127.0.0.1): a fixed ``chat.completion`` body, or an SSE stream
of 23 events and ``[DONE]``.

Contenders (each on one event loop, the default asyncio loop, as a library user has it):

* ``httpx``: ``httpx.AsyncClient`` with the limits this package used to give it
  (``max_connections=100, max_keepalive_connections=20``, httpx's own defaults too);
* ``httpx keepalive=100``: the same with 100 keep-alive connections (is it a setting?);
* ``httpx + AiohttpTransport``: ``httpx.AsyncClient`` over httpx-aiohttp's transport (when
  httpx-aiohttp is importable: ``make bench-http`` puts it on the path without installing it);
* ``aiohttp``: a bare ``aiohttp.ClientSession``;
* ``openai SDK``: ``AsyncOpenAI.chat.completions.create`` with the SDK's default client
  (httpx2), and with ``langchain_multillm._http.openai_aiohttp_client()`` (what
  ``ChatAzureOpenAI`` uses: the SDK's aiohttp adapter on the package's shared session);
* ``ChatVLLMServer`` ``ainvoke`` / ``astream`` with its default async client (aiohttp), and with
  an injected ``httpx.AsyncClient`` (the package's async path before it moved to aiohttp).

Each contender runs at 1 and 32 concurrent callers, for ``--seconds`` per cell, in
``--rounds`` interleaved rounds (the order rotating, so background load falls on all alike).
requests/s is the median of the rounds; p50 / p99 pool every request's latency. Every answer is
checked (the fixed completion; a stream must reach ``[DONE]``).

Usage: ``python bench/http_clients.py [--rounds 3] [--seconds 1.5] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import EXPECTED, MODEL, Server  # the same fake upstream as bench/run.py

PROMPT = "Write one short sentence about the sea."
BODY = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
CONCURRENCY = (1, 32)
TRACING_VARS = ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")

Call = Callable[[], Awaitable[None]]


def _check_body(raw: bytes) -> None:
    content = json.loads(raw)["choices"][0]["message"]["content"]
    if content != EXPECTED:
        raise AssertionError(f"unexpected completion {content!r}")


def _check_stream(lines: list[str]) -> None:
    datas = [ln[5:].strip() for ln in lines if ln.startswith("data:")]
    if not datas or datas[-1] != "[DONE]":
        raise AssertionError("the stream did not reach [DONE]")
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "")
        for c in map(json.loads, datas[:-1])
        if c["choices"]
    )
    if text != EXPECTED:
        raise AssertionError(f"unexpected streamed text {text!r}")


# ------------------------------------------------------------------ contenders


@dataclass
class Contender:
    """One client: a JSON call and a streamed call, and how to close it."""

    name: str
    invoke: Call
    stream: Call
    close: Callable[[], Awaitable[None]]


def httpx_contender(name: str, base: str, **client_kw: Any) -> Contender:
    import httpx

    client = httpx.AsyncClient(**client_kw)
    url = f"{base}/chat/completions"

    async def invoke() -> None:
        r = await client.post(url, json=BODY)
        r.raise_for_status()
        _check_body(r.content)

    async def stream() -> None:
        async with client.stream("POST", url, json=STREAM_BODY) as r:
            r.raise_for_status()
            _check_stream([line async for line in r.aiter_lines()])

    return Contender(name, invoke, stream, client.aclose)


def aiohttp_contender(base: str) -> Contender:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    url = f"{base}/chat/completions"

    async def invoke() -> None:
        async with session.post(url, json=BODY) as r:
            r.raise_for_status()
            _check_body(await r.read())

    async def stream() -> None:
        async with session.post(url, json=STREAM_BODY) as r:
            r.raise_for_status()
            _check_stream([line.decode().rstrip("\r\n") async for line in r.content])

    return Contender("aiohttp", invoke, stream, session.close)


def openai_contender(name: str, base: str, client: str | None) -> Contender:
    from openai import AsyncOpenAI

    http_client = None
    if client == "aiohttp":
        from langchain_multillm._http import openai_aiohttp_client

        http_client = openai_aiohttp_client()
        if http_client is None:
            raise ImportError("this openai has no aiohttp adapter")
    sdk = AsyncOpenAI(base_url=base, api_key="x", max_retries=0, http_client=http_client)
    args = dict(BODY)

    async def invoke() -> None:
        out = await sdk.chat.completions.create(**args)
        if out.choices[0].message.content != EXPECTED:
            raise AssertionError("unexpected completion")

    async def stream() -> None:
        text = ""
        events = await sdk.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        )
        async for c in events:
            if c.choices:
                text += c.choices[0].delta.content or ""
        if text != EXPECTED:
            raise AssertionError(f"unexpected streamed text {text!r}")

    return Contender(name, invoke, stream, sdk.close)


def chat_contender(name: str, base: str, **kw: Any) -> Contender:
    from langchain_multillm import ChatVLLMServer

    llm = ChatVLLMServer(base_url=base, model=MODEL, max_tokens=64, max_retries=2, **kw)

    async def invoke() -> None:
        out = await llm.ainvoke(PROMPT)
        if out.content != EXPECTED:
            raise AssertionError(f"unexpected completion {out.content!r}")

    async def stream() -> None:
        text = ""
        async for chunk in llm.astream(PROMPT):
            text += str(chunk.content)
        if text != EXPECTED:
            raise AssertionError(f"unexpected streamed text {text!r}")

    async def close() -> None:
        await llm.aclose()
        injected = kw.get("http_async_client")
        if injected is not None:
            await injected.aclose()

    return Contender(name, invoke, stream, close)


def contenders(base: str, only: list[str]) -> list[Contender]:
    """The contenders whose name has one of ``only`` (all without it), created in this order."""
    import httpx

    def keepalive(n: int) -> httpx.Limits:
        return httpx.Limits(max_connections=100, max_keepalive_connections=n)

    def third_party() -> Contender:
        from httpx_aiohttp import AiohttpTransport

        return httpx_contender("httpx + AiohttpTransport", base, transport=AiohttpTransport())

    def injected() -> Contender:
        client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=keepalive(20))
        name = "ChatVLLMServer (httpx.AsyncClient injected)"
        return chat_contender(name, base, http_async_client=client)

    factories: dict[str, Callable[[], Contender]] = {
        "httpx": lambda: httpx_contender("httpx", base, limits=keepalive(20)),
        "httpx keepalive=100": lambda: httpx_contender(
            "httpx keepalive=100", base, limits=keepalive(100)
        ),
        "httpx + AiohttpTransport": third_party,
        "aiohttp": lambda: aiohttp_contender(base),
        "openai SDK (default client)": lambda: openai_contender(
            "openai SDK (default client)", base, None
        ),
        "openai SDK (aiohttp, shared session)": lambda: openai_contender(
            "openai SDK (aiohttp, shared session)", base, "aiohttp"
        ),
        "ChatVLLMServer (default client)": lambda: chat_contender(
            "ChatVLLMServer (default client)", base
        ),
        "ChatVLLMServer (httpx.AsyncClient injected)": injected,
    }
    out = []
    for name, make in factories.items():
        if only and not any(o in name for o in only):
            continue
        try:
            out.append(make())
        except ImportError as exc:
            print(f"({name}: left out, {exc})", file=sys.stderr)
    return out


# ------------------------------------------------------------------ timing


@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def run_cell(fn: Call, concurrency: int, seconds: float, cell: Cell) -> None:
    """``concurrency`` callers call ``fn`` in a loop until ``seconds`` have passed."""
    clock = time.perf_counter
    deadline = clock() + seconds
    lat: list[float] = []

    async def worker() -> None:
        while clock() < deadline:
            t0 = clock()
            await fn()
            lat.append(clock() - t0)

    t0 = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = clock() - t0
    cell.rates.append(len(lat) / wall)
    cell.latencies.extend(lat)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def bench(base: str, rounds: int, seconds: float, only: list[str]) -> dict[tuple, Cell]:
    cs = contenders(base, only)
    cells: dict[tuple, Cell] = {}
    try:
        # Warm-up: connections opened, limits fetched, code paths imported.
        for c in cs:
            await asyncio.gather(*(c.invoke() for _ in range(32)))
            await asyncio.gather(*(c.stream() for _ in range(32)))
        gc.collect()
        for r in range(rounds):
            k = r % len(cs)
            for c in cs[k:] + cs[:k]:
                for mode, fn in (("json", c.invoke), ("stream", c.stream)):
                    for n in CONCURRENCY:
                        cell = cells.setdefault((c.name, mode, n), Cell())
                        await run_cell(fn, n, seconds, cell)
    finally:
        for c in cs:
            await c.close()
    return cells


def render(cells: dict[tuple, Cell]) -> str:
    head = ["client", "mode", "callers", "requests/s", "p50", "p99", "n"]
    rows = []
    for (name, mode, n), cell in cells.items():
        rows.append(
            [
                name,
                mode,
                str(n),
                f"{statistics.median(cell.rates):,.0f}",
                f"{pct(cell.latencies, 0.50) * 1e3:.2f} ms",
                f"{pct(cell.latencies, 0.99) * 1e3:.2f} ms",
                str(len(cell.latencies)),
            ]
        )
    rows.sort(key=lambda r: (r[1], int(r[2]), r[0]))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("httpx", "httpcore", "anyio", "aiohttp", "httpx-aiohttp", "langchain-core"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{p} {version(p)}")
    return ", ".join(out)


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="per cell and round")
    parser.add_argument("--only", nargs="*", default=[], help="contenders whose name has this")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    for var in TRACING_VARS:
        os.environ.pop(var, None)
    server = Server()
    started = time.perf_counter()
    try:
        server.start()
        base = server.base_url
        cells = asyncio.run(bench(base, args.rounds, args.seconds, args.only))
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    print(f"## Async HTTP clients against an instant upstream ({elapsed:.0f} s)")
    print()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {versions()}. Upstream: "
        f"bench/fake_openai_server.py (own process). {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per cell; requests/s: median of the rounds; p50/p99: all requests."
    )
    print()
    print(render(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
