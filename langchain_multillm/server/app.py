"""``create_app(config)``: the OpenAI-compatible gateway as an ASGI app (Starlette).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /tokenize`` (vLLM's shape), ``GET /health``, ``GET /ready``, ``GET /v1/health_check``,
``GET /metrics``, ``GET /openapi.json`` and ``GET /docs``.

Models are built once, when the app is made, through ``load_chat_model`` (or
``load_completion_model`` for ``kind: completion``), and reached only through their public
surface: ``acheck_fit`` before a call (over the window: a 400 and nothing sent), ``ainvoke`` /
``astream`` / ``agenerate``, ``acount_tokens``, ``aget_limits``, ``ahealth``. Nothing here names a
backend, so a new backend is served the day it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.outputs import LLMResult
from pydantic import BaseModel, ValidationError

from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError
from langchain_multillm.fit import enforce
from langchain_multillm.health import HealthReport
from langchain_multillm.server.cache import CacheLookup, ResponseCache, record_message
from langchain_multillm.server.config import ConfigError, ModelConfig, ServeConfig
from langchain_multillm.server.http_errors import (
    GatewayAuthenticationError,
    RequestSchemaError,
    RequestTooLargeError,
    UnknownModelError,
    error_body,
    type_name,
)
from langchain_multillm.server.limits import ModelLimiter
from langchain_multillm.server.openai_wire import (
    MESSAGE_CLASSES,
    ROLES,
    ChatCall,
    ChatCompletionRequest,
    ChunkWriter,
    CompletionCall,
    CompletionRequest,
    TextChunkWriter,
    TokenizeRequest,
    Tool,
    chat_completion_body,
    text_completion_body,
    to_chat_call,
    to_completion_call,
    to_messages,
)

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the gateway needs the [server] extra: pip install 'langchain-multillm[server]'"
    ) from exc

__all__ = ["create_app", "run"]

log = logging.getLogger("langchain_multillm.server")

CONFIG_ENV = "MULTILLM_SERVE_CONFIG"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """JSON bytes (orjson; the standard library for what orjson refuses, e.g. huge ints)."""
        try:
            return orjson.dumps(obj)
        except TypeError:
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

except ImportError:  # pragma: no cover - orjson is in the [server] extra

    def dumps(obj: Any) -> bytes:
        """JSON bytes."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response, serialized once."""
    return Response(dumps(obj), status_code=status, headers=headers, media_type="application/json")


# ------------------------------------------------------------------ metrics

BREAKER = {"closed": 0, "open": 1, "probing": 2}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The gateway's Prometheus metrics (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "multillm_requests",
            "Requests answered, by model, route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "multillm_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "multillm_time_to_first_token_seconds",
            "Time from request to the first streamed token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "multillm_tokens",
            "Tokens in prompts and answers, as the models reported them.",
            ["model", "direction"],
            registry=r,
        )
        self.in_flight = Gauge(
            "multillm_in_flight", "Calls to a model in flight.", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "multillm_queue_depth", "Calls waiting for a model's slot.", ["model"], registry=r
        )
        self.fit_refusals = Counter(
            "multillm_fit_refusals",
            "Requests refused before sending because they do not fit the window.",
            ["model"],
            registry=r,
        )
        self.errors = Counter(
            "multillm_errors",
            "Errors answered, by model and error class.",
            ["model", "type"],
            registry=r,
        )
        replica = ["model", "replica"]
        self.replica_state = Gauge(
            "multillm_replica_breaker",
            "A routed model's deployment: its breaker (0 closed, 1 open, 2 probing).",
            replica,
            registry=r,
        )
        self.replica_in_flight = Gauge(
            "multillm_replica_in_flight", "Calls in flight to a deployment.", replica, registry=r
        )
        self.replica_calls = Gauge(
            "multillm_replica_calls", "Calls sent to a deployment, in all.", replica, registry=r
        )
        self.replica_failures = Gauge(
            "multillm_replica_failures",
            "A deployment's retryable failures and cut streams, in all.",
            replica,
            registry=r,
        )
        from langchain_multillm.server.allocator import in_use

        allocator = Gauge(
            "multillm_allocator",
            "The memory allocator this process runs on (1 for the one in use).",
            ["allocator"],
            registry=r,
        )
        allocator.labels(in_use()).set(1)
        self.idle_collections = Counter(
            "multillm_idle_collections",
            "Full garbage collections run when idle after a burst (server.idle_gc_after_s).",
            registry=r,
        )
        self.idle_collection_seconds = Counter(
            "multillm_idle_collection_seconds",
            "Time those collections took.",
            registry=r,
        )

    def collected(self, seconds: float) -> None:
        self.idle_collections.inc()
        self.idle_collection_seconds.inc(seconds)


# ------------------------------------------------------------------ a served model


@dataclasses.dataclass
class Served:
    """A configured model, built once, with its limiter and cached health."""

    name: str
    kind: str
    model: Any
    limiter: ModelLimiter
    health_ttl: float
    _health: HealthReport | None = None
    _health_at: float = 0.0
    _probe: asyncio.Task[HealthReport] | None = None

    @property
    def policy(self) -> str:
        return str(getattr(self.model, "context_overflow", "raise"))

    async def health(self) -> HealthReport:
        """The model's ``ahealth()``, reused for ``health_ttl`` seconds; concurrent probes share
        one call."""
        if self._health is not None and time.monotonic() - self._health_at < self.health_ttl:
            return self._health
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> HealthReport:
        try:
            report: HealthReport = await self.model.ahealth()
        finally:
            self._probe = None
        self._health, self._health_at = report, time.monotonic()
        return report

    async def window(self) -> int | None:
        """The model's context window (its limits are asked once, then cached by the model)."""
        window = getattr(self.model, "context_window", None)
        if window is None:
            with contextlib.suppress(Exception):
                limits = await asyncio.wait_for(self.model.aget_limits(), timeout=5.0)
                window = limits.context_window
        return window


def build_model(i: int, entry: ModelConfig, config: ServeConfig) -> Any:
    """Build one configured model (a refusal names ``models[i]`` and the field)."""
    from langchain_multillm.loader import load_chat_model, load_completion_model

    load = load_chat_model if entry.kind == "chat" else load_completion_model
    try:
        return load(entry.model, **entry.params)
    except InvalidInputError as exc:
        where = "model" if exc.field == "spec" else f"params.{exc.field}"
        raise ConfigError(f"models[{i}].{where}", config.redact(exc.problem)) from None
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix(f"{loc}: ")
        if err["type"] == "extra_forbidden":
            msg = f"not a field of {exc.title}"
        where = f"models[{i}].params" + (f".{loc}" if loc else "")
        raise ConfigError(where, config.redact(msg)) from None
    except ImportError as exc:
        raise ConfigError(f"models[{i}].model", config.redact(str(exc))) from None


def build_routed(i: int, entry: ModelConfig, config: ServeConfig) -> Any:
    """The entry's model; with ``replicas``, a ``ChatRouter`` over it and its replicas."""
    model = build_model(i, entry, config)
    if not entry.replicas:
        return model
    deployments = [model]
    for j, replica in enumerate(entry.replicas):
        spec = entry.model_copy(update={"model": replica.model, "params": replica.params})
        try:
            deployments.append(build_model(i, spec, config))
        except ConfigError as exc:  # name the replica, not the entry
            field = exc.field.replace(f"models[{i}]", f"models[{i}].replicas[{j}]", 1)
            raise ConfigError(field, exc.problem) from None
    return _router(i, entry, deployments, [f"{entry.name}#{k}" for k in range(len(deployments))],
                   entry.routing.strategy, entry.routing.weights)  # fmt: skip


def with_fallbacks(i: int, entry: ModelConfig, built: dict[str, Any]) -> Any:
    """The entry's model, followed in order by its ``fallbacks`` (their own models: a
    fallback's fallbacks are not followed)."""
    model = built[entry.name]
    if not entry.fallbacks:
        return model
    models = [model, *(built[name] for name in entry.fallbacks)]
    return _router(i, entry, models, [entry.name, *entry.fallbacks], "ordered", None)


def _router(
    i: int, entry: ModelConfig, models: list[Any], names: list[str], strategy: Any,
    weights: list[float] | None,
) -> Any:  # fmt: skip
    from langchain_multillm.routing import ChatRouter

    try:
        return ChatRouter(
            models=models, names=names, strategy=strategy, weights=weights,
            failure_threshold=entry.routing.failure_threshold, cooldown_s=entry.routing.cooldown_s,
        )  # fmt: skip
    except InvalidInputError as exc:
        raise ConfigError(f"models[{i}].routing", str(exc)) from None
    except ValidationError as exc:
        msg = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"models[{i}].routing", msg) from None


def replica_states(model: Any) -> list[dict[str, Any]] | None:
    """Each deployment's breaker and counts, for a routed model (else None)."""
    state = getattr(model, "state", None)
    if state is None or not callable(state):
        return None
    return [dataclasses.asdict(s) for s in state(nested=True)]


# ------------------------------------------------------------------ streams


class SSEResponse:
    """A server-sent-event stream that always cleans up: when the body is done, when the
    client goes away (the generator is cancelled at once, so the model stops), or when sending
    fails, the generator is closed and ``on_close`` runs (it gives the model's slot back)."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = body
        self.on_close = on_close
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def _pump(self, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.headers,
                ],
            }
        )
        # The body runs in its own task and the events it has made while this one was sending
        # go out together: one write (one syscall, one wake-up of the client) for what an
        # upstream read brought, not one per event. Nothing waits to be batched: an event is
        # sent as soon as the body has to wait for the model. At most _SSE_AHEAD events wait
        # here (a slow client slows the body down, as before).
        pending: list[bytes] = []
        ready = asyncio.Event()
        room = asyncio.Event()
        ended = False

        async def produce() -> None:
            nonlocal ended
            try:
                async for piece in self.body:
                    pending.append(piece)
                    ready.set()
                    if len(pending) >= _SSE_AHEAD:
                        room.clear()
                        await room.wait()
            finally:
                ended = True
                ready.set()

        producer = asyncio.ensure_future(produce())
        try:
            while True:
                if not pending and not ended:
                    await ready.wait()
                    ready.clear()
                if pending:
                    data = b"".join(pending)
                    pending.clear()
                    room.set()
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                elif ended:
                    break
            await producer  # its error, if it failed
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        left = False

        async def watch() -> None:
            nonlocal left
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    left = True
                    pump.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await pump
        except asyncio.CancelledError:
            if not left:  # cancelled from outside (the server stops): pass it on
                raise
        except OSError:
            pass  # sending failed: the client went away
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await self.body.aclose()  # type: ignore[attr-defined]
            await self.on_close()


def sse(obj: Any) -> bytes:
    """One ``data:`` event."""
    return b"data: " + dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
# Events a stream's body may make ahead of the client (SSEResponse); past it, the body waits.
_SSE_AHEAD = 64


def trailer(data: dict[str, Any] | None) -> bytes:
    """The replaced microservice's ``json: {...}`` line after ``[DONE]`` (``data``, as sent)."""
    return b"json: " + dumps(data) + b"\n\n" if data is not None else b""


class _Ending(AsyncCallbackHandler):
    """Catches a completion model's final generation (finish reason, usage) in a stream."""

    run_inline = True

    def __init__(self) -> None:
        self.info: dict[str, Any] | None = None
        self.text = ""

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        gens = response.generations
        if gens and gens[0]:
            self.info = dict(gens[0][0].generation_info or {})
            self.text = gens[0][0].text


# ------------------------------------------------------------------ the gateway


class Gateway:
    """The routes' state: the config, the models, the keys, the metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.settings = config.server
        self.keys = [k.get_secret_value().encode() for k in config.server.api_keys]
        self.metrics = Metrics()
        self.models: dict[str, Served] = {}
        built = {e.name: build_routed(i, e, config) for i, e in enumerate(config.models)}
        for i, entry in enumerate(config.models):
            model = with_fallbacks(i, entry, built)
            self.models[entry.name] = self._served(entry, model)
        self.default_model = config.models[0].name
        self.cache: ResponseCache | None = None
        if config.cache is not None:  # the response cache (server/cache.py)
            self.cache = ResponseCache(
                config.cache, config.models, self.metrics.registry, config.redact
            )

    def _served(self, entry: ModelConfig, model: Any) -> Served:
        in_flight = self.metrics.in_flight.labels(entry.name)
        queue = self.metrics.queue_depth.labels(entry.name)

        def on_change(n_in_flight: int, n_waiting: int) -> None:
            in_flight.set(n_in_flight)
            queue.set(n_waiting)

        limiter = ModelLimiter(
            entry.name, entry.max_concurrency, entry.max_queue, on_change=on_change
        )
        return Served(entry.name, entry.kind, model, limiter, self.settings.health_cache_s)

    # ---- helpers ----
    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayAuthenticationError(
                "no API key: send it as the header 'Authorization: Bearer KEY'"
            )
        given = token.strip().encode()
        ok = False
        for key in self.keys:  # compare with every key, in constant time
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise GatewayAuthenticationError("the API key is not valid")

    def served(self, name: str | None, route: str, kind: str | None) -> Served:
        served = self.models.get(name or self.default_model)
        if served is None:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"the model {name!r} is not served here; models: {known}")
        if kind is not None and served.kind != kind:
            other = "/v1/completions" if served.kind == "completion" else "/v1/chat/completions"
            raise UnknownModelError(
                f"{name!r} is a {served.kind} model, not served on {route}; use {other}"
            )
        return served

    async def body(self, request: Request) -> bytes:
        limit = self.settings.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InvalidInputError("Content-Length", "must be a number of bytes") from None
            if declared > limit:
                raise RequestTooLargeError(
                    "body", f"{declared} bytes is more than the {limit} this server takes"
                )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError("body", f"more than the {limit} bytes this server takes")
            chunks.append(chunk)
        return b"".join(chunks)

    def error(
        self,
        exc: BaseException,
        model: str,
        route: str,
        started: float,
        *,
        param: str | None = None,
    ) -> Response:
        status, body, headers = error_body(exc, param=param, redact=self.config.redact)
        if status >= 500:
            log.error(
                "%s %s: %s",
                route,
                model,
                self.config.redact(f"{type(exc).__name__}: {exc}"),
                exc_info=status == 500,
            )
        self.metrics.errors.labels(model, type_name(exc)).inc()
        self.count(model, route, status, started)
        return json_response(body, status, headers)

    def count(self, model: str, route: str, status: int, started: float) -> None:
        self.metrics.requests.labels(model, route, str(status)).inc()
        self.metrics.latency.labels(model, route).observe(time.perf_counter() - started)

    def tokens(self, model: str, usage: dict[str, Any] | None) -> None:
        if usage:
            self.metrics.tokens.labels(model, "in").inc(int(usage.get("prompt_tokens") or 0))
            self.metrics.tokens.labels(model, "out").inc(int(usage.get("completion_tokens") or 0))

    async def gate(self, served: Served, x: Any, call: ChatCall | CompletionCall) -> dict[str, Any]:
        """The fit check before a call, and the call's parameters (``max_tokens`` clamped where
        asked). Over the window under ``raise``: :class:`ContextWindowExceededError`, before
        anything is sent."""
        policy = call.policy or served.policy
        kwargs = dict(call.kwargs)
        if call.max_tokens is not None:
            kwargs["max_tokens"] = call.max_tokens
        if policy == "raise":
            tools = call.tools if isinstance(call, ChatCall) else None
            report = await served.model.acheck_fit(x, max_tokens=call.max_tokens, tools=tools)
            if not report.fits:
                self.metrics.fit_refusals.labels(served.name).inc()
                enforce(report, "raise", backend=None)
            kwargs["context_overflow"] = "ignore"  # checked: the model need not count again
        else:
            kwargs["context_overflow"] = policy  # clamp: the model lowers max_tokens itself
        return kwargs

    # ---- routes ----
    async def chat_completions(self, request: Request) -> Any:
        started = time.perf_counter()
        route = "/v1/chat/completions"
        name = "_unknown"
        param: str | None = None
        try:
            self.authorize(request)
            req = parse(ChatCompletionRequest, await self.body(request))
            served = self.served(req.model, route, "chat")
            name = served.name
            call = to_chat_call(req)
            cache = self.cache
            cached = await cache.lookup(name, route, served.model, call) if cache else None
            if cached is not None and cached.hit:
                return self._cached_chat(served, call, cached, started)
            try:
                kwargs = await self.gate(served, call.messages, call)
            except ContextWindowExceededError:
                param = "messages"
                raise
            stream = call.stream and not self.settings.output_guard
            slot = await served.limiter.acquire()
        except Exception as exc:
            return self.error(exc, name, route, started, param=param)
        if stream:
            return await self._chat_stream(served, call, kwargs, slot, started, cached)
        try:
            message = await served.model.ainvoke(call.messages, stop=call.stop, **kwargs)
        except Exception as exc:
            return self.error(exc, name, route, started)
        finally:
            served.limiter.release(slot)
        body = chat_completion_body(message, model=name, data=call.data)
        self.tokens(name, body.get("usage"))
        self.count(name, route, 200, started)
        if self.cache is not None:
            await self.cache.store_chat(cached, message)
        return json_response(body, headers=cached.headers if cached else None)

    def _cached_chat(
        self, served: Served, call: ChatCall, cached: CacheLookup, started: float
    ) -> Response:
        """A chat answer from the response cache: as JSON, or replayed as a stream (its
        reasoning, tool calls, finish reason and usage included)."""
        route = "/v1/chat/completions"
        assert cached.record is not None
        message = record_message(cached.record)
        self.count(served.name, route, 200, started)
        if not (call.stream and not self.settings.output_guard):
            body = chat_completion_body(message, model=served.name, data=call.data)
            return json_response(body, headers=cached.headers)
        writer = ChunkWriter(served.name)
        pieces = [sse(piece) for piece in writer.whole(message)]
        usage = writer.usage_chunk()
        if usage is not None and (call.include_usage or self.settings.force_include_usage):
            pieces.append(sse(usage))
        pieces.append(DONE + trailer(call.data))
        headers = {**SSE_HEADERS, **cached.headers}
        return Response(b"".join(pieces), media_type="text/event-stream", headers=headers)

    async def _chat_stream(
        self,
        served: Served,
        call: ChatCall,
        kwargs: dict[str, Any],
        slot: float,
        started: float,
        cached: CacheLookup | None = None,
    ) -> Any:
        route = "/v1/chat/completions"
        name = served.name
        writer = ChunkWriter(name)
        include_usage = call.include_usage or self.settings.force_include_usage
        if self.settings.disable_streaming:
            try:
                message = await served.model.ainvoke(call.messages, stop=call.stop, **kwargs)
            except BaseException as exc:
                served.limiter.release(slot)
                if not isinstance(exc, Exception):
                    raise
                return self.error(exc, name, route, started)
            first: Any = None
            rest: Any = None
            whole = writer.whole(message)
            if self.cache is not None:
                await self.cache.store_chat(cached, message)
        else:
            # The first chunk before the status line: a failure up to here is a plain error
            # response with its own status, not an event in a stream that said 200.
            rest = served.model.astream(call.messages, stop=call.stop, **kwargs)
            if self.cache is not None:  # stored once it ends whole
                rest = self.cache.tap(cached, rest)
            try:
                first = await rest.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException as exc:
                served.limiter.release(slot)
                with contextlib.suppress(Exception):
                    await rest.aclose()
                if not isinstance(exc, Exception):
                    raise
                return self.error(exc, name, route, started)
            whole = None
            self.metrics.ttft.labels(name).observe(time.perf_counter() - started)
        state = {"status": 200}

        async def body() -> AsyncIterator[bytes]:
            try:
                if whole is not None:
                    for piece in whole:
                        yield sse(piece)
                else:
                    if first is not None:
                        out = writer.feed(first)
                        if out is not None:
                            yield sse(out)
                    async for chunk in rest:
                        out = writer.feed(chunk)
                        if out is not None:
                            yield sse(out)
                usage = writer.usage_chunk()
                if include_usage and usage is not None:
                    yield sse(usage)
                self.tokens(name, usage["usage"] if usage is not None else None)
                yield DONE + trailer(call.data)
            except Exception as exc:
                # After the first chunk: one error event, and no [DONE], so no client takes
                # the cut answer for a whole one.
                status, err, _ = error_body(exc, redact=self.config.redact)
                state["status"] = status
                self.metrics.errors.labels(name, type_name(exc)).inc()
                log.warning(
                    "stream of %s cut: %s", name, self.config.redact(f"{type(exc).__name__}: {exc}")
                )
                yield sse(err)

        async def close() -> None:
            if rest is not None:
                with contextlib.suppress(Exception):
                    await rest.aclose()
            served.limiter.release(slot)
            self.count(name, route, state["status"], started)

        return SSEResponse(body(), close, cached.headers if cached else None)

    async def completions(self, request: Request) -> Any:
        started = time.perf_counter()
        route = "/v1/completions"
        name = "_unknown"
        param: str | None = None
        try:
            self.authorize(request)
            req = parse(CompletionRequest, await self.body(request))
            served = self.served(req.model, route, "completion")
            name = served.name
            call = to_completion_call(req)
            cache = self.cache
            cached = await cache.lookup(name, route, served.model, call) if cache else None
            if cached is not None and cached.hit:
                return self._cached_text(served, call, cached, started)
            try:
                kwargs = await self.gate(served, call.prompt, call)
            except ContextWindowExceededError:
                param = "prompt"
                raise
            stream = call.stream and not self.settings.output_guard
            slot = await served.limiter.acquire()
        except Exception as exc:
            return self.error(exc, name, route, started, param=param)
        if stream and not self.settings.disable_streaming:
            return await self._text_stream(served, call, kwargs, slot, started, cached)
        try:
            result = await served.model.agenerate([call.prompt], stop=call.stop, **kwargs)
        except Exception as exc:
            return self.error(exc, name, route, started)
        finally:
            served.limiter.release(slot)
        gen = result.generations[0][0]
        info = gen.generation_info or {}
        self.tokens(name, info.get("usage"))
        self.count(name, route, 200, started)
        if self.cache is not None:
            await self.cache.store(cached, _text_record(gen.text, info))
        headers = cached.headers if cached else {}
        if stream:  # disable_streaming: the whole answer as one chunk
            writer = TextChunkWriter(name)
            pieces = [sse(writer.chunk(gen.text, info.get("finish_reason")))]
            usage = writer.usage_chunk(info.get("usage"))
            if usage is not None and (call.include_usage or self.settings.force_include_usage):
                pieces.append(sse(usage))
            pieces.append(DONE + trailer(call.data))
            return Response(
                b"".join(pieces), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
            )
        body = text_completion_body(gen.text, info, model=name, data=call.data)
        return json_response(body, headers=headers or None)

    def _cached_text(
        self, served: Served, call: CompletionCall, cached: CacheLookup, started: float
    ) -> Response:
        """A completion from the response cache: as JSON, or replayed as a stream."""
        assert cached.record is not None
        text = str(cached.record.get("content") or "")
        info = {k: cached.record.get(k) for k in ("finish_reason", "usage")}
        self.count(served.name, "/v1/completions", 200, started)
        if not (call.stream and not self.settings.output_guard):
            body = text_completion_body(text, info, model=served.name, data=call.data)
            return json_response(body, headers=cached.headers)
        writer = TextChunkWriter(served.name)
        pieces = [sse(writer.chunk(text)), sse(writer.chunk("", info["finish_reason"]))]
        usage = writer.usage_chunk(info["usage"])
        if usage is not None and (call.include_usage or self.settings.force_include_usage):
            pieces.append(sse(usage))
        pieces.append(DONE + trailer(call.data))
        headers = {**SSE_HEADERS, **cached.headers}
        return Response(b"".join(pieces), media_type="text/event-stream", headers=headers)

    async def _text_stream(
        self,
        served: Served,
        call: CompletionCall,
        kwargs: dict[str, Any],
        slot: float,
        started: float,
        cached: CacheLookup | None = None,
    ) -> Any:
        route = "/v1/completions"
        name = served.name
        writer = TextChunkWriter(name)
        ending = _Ending()
        include_usage = call.include_usage or self.settings.force_include_usage
        rest = served.model.astream(
            call.prompt, config={"callbacks": [ending]}, stop=call.stop, **kwargs
        )
        try:
            first: str | None = await rest.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            served.limiter.release(slot)
            with contextlib.suppress(Exception):
                await rest.aclose()
            if not isinstance(exc, Exception):
                raise
            return self.error(exc, name, route, started)
        self.metrics.ttft.labels(name).observe(time.perf_counter() - started)
        state = {"status": 200}

        async def body() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield sse(writer.chunk(first))
                async for text in rest:
                    if text:
                        yield sse(writer.chunk(text))
                info = ending.info or {}
                yield sse(writer.chunk("", info.get("finish_reason")))
                usage = writer.usage_chunk(info.get("usage"))
                self.tokens(name, info.get("usage"))
                if self.cache is not None:  # the stream ended whole
                    await self.cache.store(cached, _text_record(ending.text, info))
                if include_usage and usage is not None:
                    yield sse(usage)
                yield DONE + trailer(call.data)
            except Exception as exc:
                status, err, _ = error_body(exc, redact=self.config.redact)
                state["status"] = status
                self.metrics.errors.labels(name, type_name(exc)).inc()
                yield sse(err)

        async def close() -> None:
            with contextlib.suppress(Exception):
                await rest.aclose()
            served.limiter.release(slot)
            self.count(name, route, state["status"], started)

        return SSEResponse(body(), close, cached.headers if cached else None)

    async def list_models(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            self.authorize(request)
        except Exception as exc:
            return self.error(exc, "_all", "/v1/models", started)
        windows = await asyncio.gather(*(s.window() for s in self.models.values()))
        created = int(time.time())
        data = [
            {
                "id": s.name,
                "object": "model",
                "created": created,
                "owned_by": "multillm",
                "root": s.name,
                "max_model_len": window,
            }
            for s, window in zip(self.models.values(), windows, strict=True)
        ]
        self.count("_all", "/v1/models", 200, started)
        return json_response({"object": "list", "data": data})

    async def tokenize(self, request: Request) -> Response:
        started = time.perf_counter()
        route = "/tokenize"
        name = "_unknown"
        try:
            self.authorize(request)
            req = parse(TokenizeRequest, await self.body(request))
            served = self.served(req.model, route, None)
            name = served.name
            count = await self._count(served, req)
            window = await served.window()
        except Exception as exc:
            return self.error(exc, name, route, started)
        self.count(name, route, 200, started)
        return json_response({"count": count, "max_model_len": window})

    async def _count(self, served: Served, req: TokenizeRequest) -> int:
        model = served.model
        if (req.prompt is None) == (req.messages is None):
            raise InvalidInputError("prompt, messages", "give exactly one of prompt or messages")
        if req.messages is not None:
            if served.kind != "chat":
                raise InvalidInputError("messages", f"{served.name!r} is a completion model")
            if not req.add_generation_prompt:
                raise InvalidInputError(
                    "add_generation_prompt",
                    "only true is served (counts are of the prompt the model is sent)",
                )
            tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
            return _exact(served, await model.acount_tokens_exact(to_messages(req.messages), tools))
        if req.tools:
            raise InvalidInputError("tools", "only with messages")
        assert req.prompt is not None
        n = _exact(served, await model.acount_tokens_exact(req.prompt))
        if not req.add_special_tokens:
            # The special tokens a prompt gets (BOS) are those an empty prompt has.
            n -= _exact(served, await model.acount_tokens_exact(""))
        return n

    async def health(self, request: Request) -> Response:
        return Response(b"", status_code=200)

    async def health_check(self, request: Request) -> Response:
        return json_response({"status": "ok", "service": "multillm"})

    async def ready(self, request: Request) -> Response:
        started = time.perf_counter()
        only = request.query_params.get("model")
        try:
            chosen = [self.served(only, "/ready", None)] if only else list(self.models.values())
        except Exception as exc:
            return self.error(exc, "_all", "/ready", started)
        reports = await asyncio.gather(*(s.health() for s in chosen))
        ready = all(r.ready for r in reports)
        models = {}
        for s, r in zip(chosen, reports, strict=True):
            entry = dataclasses.asdict(r)
            entry["detail"] = self.config.redact(str(entry["detail"]))
            replicas = replica_states(s.model)
            if replicas is not None:
                for rep in replicas:
                    rep["last_health"] = self.config.redact(str(rep["last_health"] or ""))
                entry["replicas"] = replicas
            models[s.name] = entry
        status = 200 if ready else 503
        return json_response({"ready": ready, "models": models}, status)

    async def metrics_route(self, request: Request) -> Response:
        for s in self.models.values():  # routed models: each deployment's state, now
            for rep in replica_states(s.model) or ():
                labels = (s.name, rep["name"])
                self.metrics.replica_state.labels(*labels).set(BREAKER[rep["breaker"]])
                self.metrics.replica_in_flight.labels(*labels).set(rep["in_flight"])
                self.metrics.replica_calls.labels(*labels).set(rep["calls"])
                self.metrics.replica_failures.labels(*labels).set(rep["failures"])
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_route(self, request: Request) -> Response:
        return json_response(openapi(bool(self.keys)))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)

    # ---- life ----
    async def startup(self) -> None:
        """Learn every model's limits and load in-process models now (by counting a word's
        tokens: never a billed call), within the start-up timeout; a model that fails is
        served anyway (``/ready`` says what is wrong)."""

        async def prepare(model: Any) -> None:
            await model.aget_limits()
            await model.acount_tokens("ready")

        async def warm(s: Served) -> None:
            try:
                await asyncio.wait_for(prepare(s.model), timeout=self.settings.startup_timeout_s)
            except Exception as exc:
                log.warning(
                    "model %s is not ready at start: %s",
                    s.name,
                    self.config.redact(f"{type(exc).__name__}: {exc}"),
                )

        await asyncio.gather(*(warm(s) for s in self.models.values()))

    async def shutdown(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()
        for s in self.models.values():
            close = getattr(s.model, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def _text_record(text: str, info: dict[str, Any]) -> dict[str, Any]:
    """What the response cache stores of a completion."""
    return {"content": text, "finish_reason": info.get("finish_reason"), "usage": info.get("usage")}


class ExactCountUnavailableError(NotImplementedError):
    """``/tokenize`` for a model whose backend cannot count exactly (501): this route answers
    exact counts only, never a bound (a client then falls back to its own bounds)."""


def _exact(served: Served, n: int | None) -> int:
    """An exact count, or :class:`ExactCountUnavailableError`."""
    if n is None:
        raise ExactCountUnavailableError(
            f"{served.name!r} cannot count tokens exactly here (its backend gives only bounds); "
            "/tokenize answers exact counts only"
        )
    return int(n)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _loc(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path (``messages[0].role``), without the union
    members pydantic names (``str``, ``list[...]``, model names)."""
    out = ""
    previous: Any = None
    named = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            previous = part
            continue
        part = str(part)
        # messages[i] is a union named by role: pydantic puts the role in the location
        tag = isinstance(previous, int) and named == "messages" and part in ROLES
        previous = part
        if tag or part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper():
            continue
        named = part
        out = f"{out}.{part}" if out else part
    return out or "body"


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """A request body as ``model``: not JSON is a 400, the wrong shape a 422, naming the field."""
    if not raw.strip():
        raise InvalidInputError("body", "is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "not valid JSON")
            raise InvalidInputError("body", f"is not valid JSON: {reason}") from None
        if first["type"] == "model_type" or not first["loc"]:
            raise RequestSchemaError("body", "must be a JSON object") from None
        path = _loc(tuple(first["loc"]))
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += ".role"
        msg = "is required" if first["type"] == "missing" else first["msg"]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise RequestSchemaError(path, f"{msg}{more}") from None


# ------------------------------------------------------------------ OpenAPI

DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>multillm gateway</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "description": "The class of the error tree."},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(s): {"description": _REASONS.get(s, "error"), "content": ref} for s in statuses}


_REASONS = {
    400: "Bad input, or over the context window (code context_length_exceeded)",
    401: "No API key, or a wrong one",
    404: "The model is not served (on this route)",
    413: "The body is too large",
    422: "The body is JSON of the wrong shape",
    501: "The model cannot count tokens exactly (/tokenize answers exact counts only)",
    429: "The model's queue is full, or the upstream rate-limits (Retry-After)",
    502: "The upstream failed",
    503: "The upstream is unavailable",
    504: "The upstream timed out",
}


def openapi(secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes (request schemas from the pydantic models)."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema(
        [
            (ChatCompletionRequest, "validation"),
            (CompletionRequest, "validation"),
            (TokenizeRequest, "validation"),
            *((cls, "validation") for cls in MESSAGE_CLASSES),
            (Tool, "validation"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = dict(top.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    obj = {"type": "object"}
    generation = {
        "description": "The answer (a stream of server-sent events when stream is true)",
        "content": {"application/json": {"schema": obj}, "text/event-stream": {"schema": obj}},
    }
    model_errors = _errors(400, 401, 404, 413, 422, 429, 502, 503, 504)
    sec: list[dict[str, list[str]]] = [{"bearer": []}] if secured else []

    def body(name: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{name}"}
        return {"required": True, "content": {"application/json": {"schema": ref}}}

    def get(summary: str, content: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        ok: dict[str, Any] = {"description": "OK"}
        if content:
            ok["content"] = content
        return {"get": {"summary": summary, "responses": {"200": ok, **extra}}}

    json_obj = {"application/json": {"schema": obj}}
    paths = {
        "/v1/chat/completions": {
            "post": {
                "summary": "Chat completion (OpenAI's API)",
                "requestBody": body("ChatCompletionRequest"),
                "responses": {"200": generation, **model_errors},
                "security": sec,
            }
        },
        "/v1/completions": {
            "post": {
                "summary": "Text completion, for models of kind completion",
                "requestBody": body("CompletionRequest"),
                "responses": {"200": generation, **model_errors},
                "security": sec,
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The models served, each with max_model_len (its window)",
                "responses": {"200": {"description": "OK", "content": json_obj}, **_errors(401)},
                "security": sec,
            }
        },
        "/tokenize": {
            "post": {
                "summary": "Count a prompt's tokens exactly (vLLM's shape); 501 where not possible",
                "requestBody": body("TokenizeRequest"),
                "responses": {
                    "200": {"description": "count and max_model_len", "content": json_obj},
                    **_errors(400, 401, 404, 413, 422, 501, 502, 503, 504),
                },
                "security": sec,
            }
        },
        "/health": get("The process serves (200, empty body)"),
        "/v1/health_check": get("The process serves", json_obj),
        "/ready": {
            "get": {
                "summary": "200 when every model (or ?model=NAME) is ready, else 503",
                "parameters": [
                    {
                        "name": "model",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "ready", "content": json_obj},
                    "503": {"description": "not ready", "content": json_obj},
                    **_errors(404),
                },
            }
        },
        "/metrics": get("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}}),
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "langchain-multillm gateway", "version": _version()},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _version() -> str:
    from langchain_multillm import __version__

    return __version__


# ------------------------------------------------------------------ the app


def create_app(config: ServeConfig | None = None) -> Starlette:
    """The gateway as an ASGI app; ``config=None``: :func:`config_from_env`. Models are built
    here (a model that cannot be built is a :class:`ConfigError`)."""
    from langchain_multillm.server.config import config_from_env

    gateway = Gateway(config if config is not None else config_from_env())
    services = None
    if gateway.config.services is not None:  # named services and their jobs (services/)
        from langchain_multillm.server.services.routes import ServicesFront

        services = ServicesFront(gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.startup()
        if services is not None:
            await services.startup()
        yield
        if services is not None:
            await services.shutdown()
        await gateway.shutdown()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", "not found")
        body = {
            "error": {
                "message": f"{request.method} {request.url.path}: {detail}",
                "type": "NotFound" if status == 404 else "InvalidRequest",
                "param": None,
                "code": None,
            }
        }
        return json_response(body, status, getattr(exc, "headers", None))

    g = gateway
    routes = [
        Route("/v1/chat/completions", g.chat_completions, methods=["POST"]),
        Route("/v1/completions", g.completions, methods=["POST"]),
        Route("/v1/models", g.list_models, methods=["GET"]),
        Route("/tokenize", g.tokenize, methods=["POST"]),
        Route("/health", g.health, methods=["GET"]),
        Route("/v1/health_check", g.health_check, methods=["GET"]),
        Route("/ready", g.ready, methods=["GET"]),
        Route("/metrics", g.metrics_route, methods=["GET"]),
        Route("/openapi.json", g.openapi_route, methods=["GET"]),
        Route("/docs", g.docs, methods=["GET"]),
    ]
    s = gateway.config.server
    middleware = []
    if s.idle_gc_after_s > 0:
        from starlette.middleware import Middleware

        from langchain_multillm.server.idle_gc import IdleCollector

        middleware.append(
            Middleware(
                IdleCollector,
                after_s=s.idle_gc_after_s,
                min_peak=s.idle_gc_min_peak,
                on_collect=gateway.metrics.collected,
            )
        )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: not_found},
        middleware=middleware,
    )
    app.state.gateway = gateway
    if services is not None:
        app.router.routes.extend(services.routes())
        app.state.services = services
    return app


def _worker_app() -> Starlette:
    """The app of a worker process (``--workers N``): the config from ``MULTILLM_SERVE_CONFIG``
    (a file path), else from the environment."""
    from langchain_multillm.server.config import config_from_env, load_config

    path = os.environ.get(CONFIG_ENV)
    return create_app(load_config(path) if path else config_from_env())


def run(config: ServeConfig, *, config_path: str | None = None) -> None:
    """Serve ``config`` with uvicorn (uvloop and httptools where installed); blocks.

    The app (and its models) is built before the port is bound, so a model that cannot be
    built stops the start with a :class:`ConfigError`.
    """
    import uvicorn

    s = config.server
    common: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "loop": "auto",
        "http": "auto",
        "access_log": s.access_log,
        "log_level": "info",
        "timeout_graceful_shutdown": 10,
    }
    app = create_app(config)
    from langchain_multillm.server.allocator import in_use

    # the models are built: a config error before this point stays the one line on stderr
    sys.stderr.write(f"INFO:     memory allocator: {in_use()}\n")
    sys.stderr.flush()
    if s.workers == 1:
        uvicorn.run(app, **common)
        return
    if config_path:
        os.environ[CONFIG_ENV] = str(config_path)
    else:
        os.environ.pop(CONFIG_ENV, None)
    del app
    uvicorn.run(
        "langchain_multillm.server.app:_worker_app", factory=True, workers=s.workers, **common
    )


def serve_config(
    config_path: str | os.PathLike[str] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    allocator: str | None = None,
) -> ServeConfig:
    """The config ``multillm serve`` runs: from ``config_path`` (else the environment), with
    the command line's overrides, checked (:class:`ConfigError`). The command then picks its
    memory allocator (``server/allocator.py``) and calls :func:`run`."""
    from langchain_multillm.server.config import config_from_env, load_config

    config = load_config(config_path) if config_path else config_from_env()
    return config.with_overrides(host=host, port=port, workers=workers, allocator=allocator)
