"""The HTTP backends' async transport: aiohttp by default, an injected httpx client otherwise.

A real OpenAI-style server on 127.0.0.1 (aiohttp.web, in its own thread and loop) provokes what
a mock cannot: a connection cut in the middle of a chunked stream, a read timeout, a refused
connection, a gzip-encoded error body, a redirect. Every scenario runs through both async paths,
the default (aiohttp) and an injected ``httpx.AsyncClient`` on a real socket, and must give the
same answer or the same error class.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import aiohttp.http_exceptions
import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from langchain_multillm import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    BadRequestError,
    ChatVLLMServer,
    ContextWindowExceededError,
    IncompleteResponseError,
    RateLimitError,
    VLLMServer,
)
from langchain_multillm import _http as h
from langchain_multillm import errors as e

WORDS = ["he", "llo", " wor", "ld"]


def completion(content: str = "hello world") -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    event = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    # ensure_ascii=False: a U+2028 in the content goes on the wire raw, as vLLM sends it.
    return ("data: " + json.dumps(event, ensure_ascii=False) + "\n\n").encode()


class Upstream:
    """The server: its scenario comes in the ``x-scenario`` header; it counts every request
    and keeps the headers of the last chat request."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.headers: dict[str, str] = {}
        self.tokens_issued = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    # ---- routes ----
    async def models(self, request: web.Request) -> web.Response:
        self.calls["models"] += 1
        card = {"id": "m", "object": "model", "max_model_len": 4096}
        return web.json_response({"object": "list", "data": [card]})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = len(body.get("prompt", "")) or 3 + sum(len(m["content"]) for m in body["messages"])
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": []})

    async def health(self, request: web.Request) -> web.Response:
        self.calls["health"] += 1
        return web.Response(status=200)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "client_credentials"
        self.tokens_issued += 1
        return web.json_response({"access_token": f"t{self.tokens_issued}", "expires_in": 3600})

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        """Gemini's routes: only slow or cut here (the protocol is the Gemini fixture's)."""
        scenario = request.headers.get("x-scenario", "slow")
        self.calls[f"gemini-{scenario}"] += 1
        self.headers = dict(request.headers)
        if scenario == "slow":
            await asyncio.sleep(3)
        if request.transport is not None:  # None: the client timed out and left already
            request.transport.abort()
        return web.Response()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        if not body.get("stream"):
            choice = {"index": 0, "text": "hello world", "finish_reason": "stop"}
            return web.json_response({"id": "c", "model": "m", "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(WORDS):
            finish = "stop" if i == len(WORDS) - 1 else None
            choice = {"index": 0, "text": word, "finish_reason": finish}
            await resp.write(f"data: {json.dumps({'id': 'c', 'choices': [choice]})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        scenario = request.headers.get("x-scenario", "ok")
        self.calls[scenario] += 1
        self.headers = dict(request.headers)
        body = await request.json()
        if scenario == "slow":
            await asyncio.sleep(3)
        if scenario == "oauth" and request.headers.get("Authorization") == "Bearer t1":
            return web.json_response({"error": {"message": "token expired"}}, status=401)
        if scenario == "429":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"retry-after": "7"}
            )
        if scenario == "context":
            msg = "This model's maximum context length is 2048 tokens. However, you asked for 4000."
            return web.json_response({"error": {"message": msg, "code": 400}}, status=400)
        if scenario == "gzip-error":
            resp = web.json_response({"error": {"message": "the pool is down"}}, status=503)
            resp.enable_compression(web.ContentCoding.gzip)
            return resp
        if scenario == "malformed":
            return web.Response(text="not json", content_type="application/json")
        if scenario == "redirect":
            return web.Response(status=307, headers={"location": "/elsewhere"})
        if not body.get("stream"):
            return web.json_response(completion())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if scenario == "u2028":
            await resp.write(chunk("a\u2028b"))
        elif scenario == "crlf":
            await resp.write(chunk("he").replace(b"\n", b"\r\n"))
            await resp.write(chunk("llo").replace(b"\n", b"\r"))
        else:
            for word in WORDS[:2]:
                await resp.write(chunk(word))
        if scenario == "cut":  # the connection breaks in the middle of the chunked body
            assert request.transport is not None
            request.transport.abort()
            return resp
        if scenario == "error-event":
            await resp.write(b'data: {"error": {"message": "engine died", "code": 503}}\n\n')
        if scenario not in ("nodone", "error-event"):
            if scenario not in ("u2028", "crlf"):
                for word in WORDS[2:]:
                    await resp.write(chunk(word))
            await resp.write(chunk(finish="stop"))
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ---- lifecycle ----
    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10), "the test server did not start"

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/health", self.health)
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/openai/deployments/{name}/chat/completions", self.chat)
        app.router.add_route("*", "/v1beta/{tail:.*}", self.gemini)
        runner = self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


PATHS = ["aiohttp", "httpx"]


def make(upstream: Upstream, path: str, scenario: str = "ok", **kw: Any) -> ChatVLLMServer:
    """A model on the default async path (aiohttp), or with an httpx client injected."""
    if path == "httpx":
        kw["http_async_client"] = httpx.AsyncClient(timeout=kw.get("request_timeout"))
    headers = {"x-scenario": scenario, **kw.pop("default_headers", {})}
    kw.setdefault("max_retries", 0)
    return ChatVLLMServer(base_url=upstream.base_url, model="m", default_headers=headers, **kw)


async def text_of(m: ChatVLLMServer) -> str:
    return "".join([str(c.content) async for c in m.astream("hi")])


# ---- answers ----


@pytest.mark.parametrize("path", PATHS)
async def test_invoke_and_stream_answer_the_same(upstream: Upstream, path: str) -> None:
    m = make(upstream, path)
    out = await m.ainvoke("hi")
    assert out.content == "hello world"
    assert out.usage_metadata == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    assert await text_of(m) == "hello world"
    assert await m.acheck_fit("hi") is not None
    await m.aclose()


async def test_default_path_is_aiohttp(upstream: Upstream) -> None:
    m = make(upstream, "aiohttp", api_key=SecretStr("sk-1"), default_headers={"x-a": "b"})
    await m.ainvoke("hi")
    assert "aiohttp" in upstream.headers["User-Agent"]
    assert upstream.headers["Authorization"] == "Bearer sk-1"
    assert upstream.headers["x-a"] == "b"
    assert upstream.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", PATHS)
async def test_a_raw_line_separator_in_an_event_is_not_a_line_end(
    upstream: Upstream, path: str
) -> None:
    # httpx's aiter_lines splits at U+2028 (str.splitlines); SSE lines end only at CR / LF.
    assert await text_of(make(upstream, path, "u2028")) == "a\u2028b"


@pytest.mark.parametrize("path", PATHS)
async def test_cr_and_crlf_line_ends(upstream: Upstream, path: str) -> None:
    assert await text_of(make(upstream, path, "crlf")) == "hello"


@pytest.mark.parametrize("path", PATHS)
async def test_completion_model_on_both_paths(upstream: Upstream, path: str) -> None:
    kw: dict[str, Any] = {}
    if path == "httpx":
        kw["http_async_client"] = httpx.AsyncClient()
    m = VLLMServer(base_url=upstream.base_url, model="m", max_retries=0, **kw)
    assert await m.ainvoke("hi") == "hello world"
    assert "".join([c async for c in m.astream("hi")]) == "hello world"


# ---- errors: the same class on both paths ----


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("429", RateLimitError),
        ("context", ContextWindowExceededError),
        ("gzip-error", BackendUnavailableError),
        ("malformed", BackendError),
        ("redirect", BackendError),
    ],
)
async def test_error_answers_map_alike(
    upstream: Upstream, path: str, scenario: str, error: type
) -> None:
    m = make(upstream, path, scenario)
    with pytest.raises(error) as info:
        await m.ainvoke("hi", context_overflow="ignore")
    if scenario == "429":
        assert info.value.retry_after == 7
        assert "slow down" in str(info.value)
    if scenario == "gzip-error":
        assert "the pool is down" in str(info.value)  # the decoded body, read once
    if scenario != "malformed":
        return
    with pytest.raises(error, match="malformed"):
        await m.ainvoke("hi")


@pytest.mark.parametrize("path", PATHS)
async def test_stream_errors_map_alike(upstream: Upstream, path: str) -> None:
    with pytest.raises(RateLimitError):
        await text_of(make(upstream, path, "429"))
    with pytest.raises(BackendUnavailableError, match="engine died"):
        await text_of(make(upstream, path, "error-event"))


@pytest.mark.parametrize("path", PATHS)
async def test_stream_that_ends_without_done_is_incomplete(upstream: Upstream, path: str) -> None:
    with pytest.raises(IncompleteResponseError):
        await text_of(make(upstream, path, "nodone"))
    with pytest.raises(IncompleteResponseError):
        await make(upstream, path, "nodone", streaming=True).ainvoke("hi")


@pytest.mark.parametrize("path", PATHS)
async def test_connection_cut_mid_stream_raises_after_the_first_chunks(
    upstream: Upstream, path: str
) -> None:
    m = make(upstream, path, "cut", max_retries=3)
    got: list[str] = []

    async def consume() -> None:
        async for c in m.astream("hi"):
            got.append(str(c.content))

    with pytest.raises(BackendUnavailableError):
        await consume()
    assert "he" in "".join(got)  # what came before the cut was passed on, then it raised
    assert upstream.calls["cut"] >= 1
    before = upstream.calls["cut"]
    with pytest.raises(BackendUnavailableError):
        await make(upstream, path, "cut", streaming=True, max_retries=3).ainvoke("hi")
    assert upstream.calls["cut"] == before + 1  # never retried after the first chunk


@pytest.mark.parametrize("path", PATHS)
async def test_read_timeout(upstream: Upstream, path: str) -> None:
    m = make(upstream, path, "slow", request_timeout=0.3)
    with pytest.raises(BackendTimeoutError):
        await m.ainvoke("hi", context_overflow="ignore")


@pytest.mark.parametrize("path", PATHS)
async def test_refused_connection(path: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    kw: dict[str, Any] = {"http_async_client": httpx.AsyncClient()} if path == "httpx" else {}
    m = ChatVLLMServer(base_url=f"http://127.0.0.1:{port}/v1", model="m", context_window=4096, **kw)
    with pytest.raises(BackendUnavailableError, match="could not connect"):
        await m.ainvoke("hi", context_overflow="ignore")
    report = await m.ahealth()
    assert not report.alive


@pytest.mark.parametrize("path", PATHS)
async def test_health_reads_status_on_both_paths(upstream: Upstream, path: str) -> None:
    before = upstream.calls["health"]
    report = await make(upstream, path).ahealth()
    assert report.alive and report.ready
    assert upstream.calls["health"] == before + 1


@pytest.mark.parametrize("path", PATHS)
async def test_proxy_from_the_environment(
    upstream: Upstream, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream stands in for a forward proxy: it answers the absolute-form request.
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{upstream.port}")
    # the model's own address is a closed loopback port: only the proxy can answer for it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kw: dict[str, Any] = {"http_async_client": httpx.AsyncClient()} if path == "httpx" else {}
    m = ChatVLLMServer(
        base_url=f"http://127.0.0.1:{closed}/v1", model="m", context_window=4096, **kw
    )
    assert (await m.ainvoke("hi", context_overflow="ignore")).content == "hello world"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    h._env_proxy.cache_clear()
    kw = {"http_async_client": httpx.AsyncClient()} if path == "httpx" else {}
    m = ChatVLLMServer(
        base_url=f"http://127.0.0.1:{closed}/v1", model="m", context_window=4096, **kw
    )
    with pytest.raises(BackendUnavailableError):  # no proxy now: the closed port refuses
        await m.ainvoke("hi", context_overflow="ignore")


# ---- OAuth2 client credentials on the aiohttp path ----


async def test_oauth_flow_runs_on_the_aiohttp_path(upstream: Upstream) -> None:
    upstream.tokens_issued = 0
    m = ChatVLLMServer(
        base_url=upstream.base_url,
        model="m",
        max_retries=0,
        oauth_client_id="cid",
        oauth_client_secret=SecretStr("shh"),
        oauth_token_url=f"http://127.0.0.1:{upstream.port}/token",
        default_headers={"x-scenario": "oauth"},
    )
    out = await m.ainvoke("hi", context_overflow="ignore")  # t1 is refused once, t2 accepted
    assert out.content == "hello world"
    assert upstream.headers["Authorization"] == "Bearer t2"
    assert upstream.tokens_issued == 2
    assert await text_of(m) == "hello world"  # the cached token t2, no third token
    assert upstream.tokens_issued == 2


# ---- the shared session and event loops ----


def test_a_new_event_loop_gets_a_new_session_quietly(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    m = make(upstream, "aiohttp")
    with caplog.at_level(logging.ERROR):
        first = asyncio.run(m.ainvoke("hi"))
        second = asyncio.run(m.ainvoke("hi"))  # a new loop: no "attached to a different loop"
        third = asyncio.run(m.ainvoke("hi"))
        gc.collect()
    assert first.content == second.content == third.content == "hello world"
    closed_loops = [lp for lp in h._SESSIONS if lp.is_closed()]
    assert len(closed_loops) <= 1  # sessions of closed loops are dropped on the next call
    assert "Unclosed" not in caplog.text


async def test_one_session_per_loop_shared_by_models(upstream: Upstream) -> None:
    a, b = make(upstream, "aiohttp"), make(upstream, "aiohttp")
    await asyncio.gather(a.ainvoke("hi"), b.ainvoke("hi"))
    session = h._SESSIONS[asyncio.get_running_loop()]
    await a.aclose()
    assert session.closed
    assert (await b.ainvoke("hi")).content == "hello world"  # b opens a new one
    assert h._SESSIONS[asyncio.get_running_loop()] is not session


async def test_many_concurrent_calls(upstream: Upstream) -> None:
    m = make(upstream, "aiohttp")
    outs = await m.abatch(["hi"] * 64)
    assert {o.content for o in outs} == {"hello world"}
    texts = await asyncio.gather(*(text_of(m) for _ in range(32)))
    assert set(texts) == {"hello world"}


# ---- the SDK backends: the openai SDK's aiohttp adapter, google-genai's aiohttp ----


def _chain(exc: BaseException | None) -> list[str]:
    out = []
    while exc is not None:
        out.append(type(exc).__module__.split(".")[0])
        exc = exc.__cause__ or exc.__context__
    return out


async def test_azure_async_goes_through_the_shared_aiohttp_session(upstream: Upstream) -> None:
    pytest.importorskip("openai")
    from langchain_multillm import ChatAzureOpenAI

    m = ChatAzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{upstream.port}",
        azure_deployment="gpt-4o",
        api_version="2024-10-21",
        api_key=SecretStr("k"),
        max_retries=0,
        default_headers={"x-scenario": "ok"},
    )
    out = await m.ainvoke("hi", context_overflow="ignore")
    assert out.content == "hello world"
    session = h._SESSIONS[asyncio.get_running_loop()]
    assert not session.closed
    assert await text_of(m) == "hello world"  # type: ignore[arg-type]
    await m.aclose()
    assert session.closed  # the SDK client closed the loop's shared session, as aclose says


@pytest.mark.parametrize(
    ("scenario", "error", "words"),
    [
        ("429", RateLimitError, "slow down"),
        ("slow", BackendTimeoutError, "timed out"),
    ],
)
async def test_azure_errors_on_the_aiohttp_path(
    upstream: Upstream, scenario: str, error: type, words: str
) -> None:
    pytest.importorskip("openai")
    from langchain_multillm import ChatAzureOpenAI

    m = ChatAzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{upstream.port}",
        azure_deployment="gpt-4o",
        api_version="2024-10-21",
        api_key=SecretStr("k"),
        max_retries=0,
        request_timeout=0.5,
        default_headers={"x-scenario": scenario},
    )
    with pytest.raises(error, match=words):
        await m.ainvoke("hi", context_overflow="ignore")


async def test_azure_refused_connection_says_so() -> None:
    pytest.importorskip("openai")
    from langchain_multillm import ChatAzureOpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = ChatAzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{port}",
        azure_deployment="gpt-4o",
        api_version="2024-10-21",
        api_key=SecretStr("k"),
        max_retries=0,
    )
    with pytest.raises(BackendUnavailableError, match="could not connect") as info:
        await m.ainvoke("hi", context_overflow="ignore")
    assert "aiohttp" in _chain(info.value)  # what broke, found under the SDK's wrapper


@pytest.mark.parametrize(("scenario", "error"), [("slow", BackendTimeoutError), ("cut", None)])
async def test_gemini_async_runs_on_aiohttp_and_maps_its_errors(
    upstream: Upstream, scenario: str, error: type | None
) -> None:
    pytest.importorskip("google.genai")
    from langchain_multillm import ChatGemini

    m = ChatGemini(
        api_key=SecretStr("AIza-test"),
        base_url=f"http://127.0.0.1:{upstream.port}",
        model="gemini-2.5-flash",
        max_retries=0,
        request_timeout=0.5,
        default_headers={"x-scenario": scenario},
    )
    with pytest.raises((BackendTimeoutError, BackendUnavailableError)) as info:
        await m.ainvoke("hi", context_overflow="ignore")
    if error is not None:
        assert isinstance(info.value, error)
    else:  # the connection closed before any answer
        assert isinstance(info.value, BackendUnavailableError)
    # google-genai sends through aiohttp once it is installed (the package depends on it):
    # aiohttp's errors, or its total timeout (a bare TimeoutError), lie under ours, no httpx2.
    chain = _chain(info.value)
    assert "httpx2" not in chain and "httpx" not in chain
    assert "aiohttp" in chain if scenario == "cut" else "builtins" in chain


# ---- the line splitter ----


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        (["a\nb\n"], ["a", "b"]),
        (["a\r\nb\r\n"], ["a", "b"]),
        (["a\r", "\nb\r", "c"], ["a", "b", "c"]),  # a CR at a chunk's end, then its LF
        (["a\rb"], ["a", "b"]),
        (["a\n\nb"], ["a", "", "b"]),  # blank lines kept (they end SSE events)
        (["x\u2028y\x85z\n"], ["x\u2028y\x85z"]),
        (["par", "tial"], ["partial"]),
        ([], []),
    ],
)
def test_line_splitter(chunks: list[str], lines: list[str]) -> None:
    assert list(h.iter_lines(chunks)) == lines


# ---- the error table ----


def _aiohttp_exception_classes() -> list[type]:
    found: set[type] = set()
    for module in (aiohttp, aiohttp.client_exceptions, aiohttp.http_exceptions):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and obj.__module__.startswith("aiohttp")
                and not issubclass(obj, Warning)
            ):
                found.add(obj)
    return sorted(found, key=lambda c: c.__name__)


def test_every_aiohttp_exception_is_mapped() -> None:
    """Fails when aiohttp grows an exception class the table does not name."""
    classes = _aiohttp_exception_classes()
    assert len(classes) > 30
    missing = [c.__name__ for c in classes if c not in e.aiohttp_errors()]
    assert missing == []


def _instance(cls: type) -> BaseException:
    refused = OSError(111, "refused")
    for args in ((), ("boom",), (None, refused), ("/sock", None, refused), (None, ())):
        try:
            return cls(*args)
        except (TypeError, AttributeError):
            continue
    return cls.__new__(cls)


@pytest.mark.parametrize("cls", _aiohttp_exception_classes(), ids=lambda c: c.__name__)
def test_aiohttp_mapping_gives_the_tables_class(cls: type) -> None:
    mapped = e.from_aiohttp_error(_instance(cls), backend="t")
    assert type(mapped) is e.aiohttp_errors()[cls][0]
    assert mapped.backend == "t"


def test_aiohttp_mapping_of_what_is_under_it() -> None:
    assert isinstance(e.from_aiohttp_error(asyncio.TimeoutError()), BackendTimeoutError)
    assert isinstance(e.from_aiohttp_error(ConnectionResetError()), BackendUnavailableError)
    assert isinstance(e.from_aiohttp_error(RuntimeError("x")), BackendError)


def test_sdk_errors_map_through_their_aiohttp_cause() -> None:
    openai = pytest.importorskip("openai")
    req = httpx.Request("POST", "http://x.invalid")
    try:
        try:
            raise aiohttp.ClientConnectorError(None, OSError(111, "refused"))  # type: ignore[arg-type]
        except aiohttp.ClientConnectorError as inner:
            raise openai.APIConnectionError(request=req) from inner  # type: ignore[arg-type]
    except openai.APIConnectionError as exc:
        mapped = e.from_openai_error(exc, backend="azure")
    assert isinstance(mapped, BackendUnavailableError)
    assert "could not connect" in str(mapped)
    # google-genai raises aiohttp's own errors, and a total timeout as asyncio's TimeoutError.
    pytest.importorskip("google.genai")
    assert isinstance(e.from_genai_error(asyncio.TimeoutError()), BackendTimeoutError)
    assert isinstance(
        e.from_genai_error(aiohttp.ServerDisconnectedError()), BackendUnavailableError
    )


def test_mapping_keeps_the_types_of_bad_request() -> None:
    assert isinstance(e.from_aiohttp_error(aiohttp.InvalidURL("x")), BadRequestError)
    assert isinstance(e.from_aiohttp_error(aiohttp.ClientError()), BackendError)
    assert not isinstance(e.from_aiohttp_error(aiohttp.ClientError()), AuthenticationError)


# ------------------------------------------------------------------ idle keep-alive connections


class _ClosesIdleConnections:
    """A raw HTTP/1.1 server in its own thread that answers every POST with a chat completion,
    keeps the connection alive, and closes it after ``idle`` seconds without a request (as
    uvicorn does after 5 s); it counts the connections it accepted."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        body = json.dumps(completion()).encode()
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle)
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.parametrize(("keepalive", "reused"), [(0.3, False), (5.0, True)])
async def test_an_idle_connection_the_server_may_have_closed_is_not_reused(
    monkeypatch: pytest.MonkeyPatch, keepalive: float, reused: bool
) -> None:
    """The shared session drops a connection idle for ``KEEPALIVE_S`` (below the server's idle
    close), so the next call opens a new one; with a keep-alive longer than the server's (the
    control, aiohttp's default is 15 s) the next call reuses the closed connection and fails
    before the server reads it. The loop is blocked meanwhile (a sync call inside async code),
    so the client cannot see the server's close in time."""
    import time

    monkeypatch.setattr(h, "KEEPALIVE_S", keepalive)
    server = _ClosesIdleConnections(idle=0.6)
    try:
        session = h._session()
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
        async with session.post(url, json={"messages": []}) as r:
            assert r.status == 200
            await r.read()
        time.sleep(1.0)  # blocks the loop: the server closes the idle connection meanwhile
        if reused:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with session.post(url, json={"messages": []}) as r:
                    await r.read()
            assert server.connections == 1
        else:
            async with session.post(url, json={"messages": []}) as r:
                assert r.status == 200
                await r.read()
            assert server.connections == 2
    finally:
        await h._session().close()
        server.stop()
