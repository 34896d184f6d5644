"""The gateway's response cache on Redis (``cache: {redis: "redis://...", ttl: 3600}``).

A request is cached only when its answer is reproducible: temperature 0 or a seed (the
request's, else the served model's own setting). Its key is a SHA-256 of everything that
shapes the answer: the served model's name, its ``load_chat_model`` spec and config params
(credentials left out), the messages (or prompt), and every call parameter the model is sent
(tools, tool_choice, response_format, sampling, max_tokens, stop, the context policy). The
value is the answer as the wire needs it (text, reasoning, tool calls, finish reason, usage),
so a stream request is answered from an entry a plain request made and the other way round.

Never cached: an answer cut by ``max_tokens`` (finish reason ``length``), a failed call, and a
stream that did not reach its end (failed, or the client left). Redis is an optimisation, never
an outage: when it fails, requests are answered from the models, the failure is logged once
(and once more when Redis is back), and Redis is retried after ``retry_s``. The URL's password
never appears in a log, an error, a metric or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from langchain_multillm.server.openai_wire import content_text

if TYPE_CHECKING:
    from langchain_multillm.server.config import CacheSettings, ModelConfig
    from langchain_multillm.server.openai_wire import ChatCall, CompletionCall

__all__ = ["HEADER", "CacheLookup", "ResponseCache", "chat_record", "record_message"]

log = logging.getLogger("langchain_multillm.server.cache")

HEADER = "x-multillm-cache"
"""The response header: ``hit``, ``miss`` (looked up, not found), ``bypass`` (not
deterministic: neither looked up nor stored) or ``unavailable`` (Redis failed: answered by the
model)."""

KEY_VERSION = "v1"
# Finish reasons of answers that are not whole: never stored.
_NOT_WHOLE = frozenset({"length", "max_tokens", "error", "content_filter"})
# Param keys left out of the key (credentials; whatever they are, the answer is the same).
_SECRET_KEY = ("key", "secret", "token", "password", "passwd", "credential", "authorization")


def _is_secret_key(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in _SECRET_KEY)


def _public(value: Any) -> Any:
    """``value`` (config params) without the entries whose key names a credential."""
    if isinstance(value, Mapping):
        return {str(k): _public(v) for k, v in value.items() if not _is_secret_key(str(k))}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    return value


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr).encode()


def _usage(usage: Any) -> dict[str, Any] | None:
    return json.loads(json.dumps(dict(usage), default=str)) if usage else None


def chat_record(message: AIMessage) -> dict[str, Any]:
    """What is stored of a chat answer: its text, reasoning, tool calls, finish reason, usage."""
    return {
        "content": content_text(message.content),
        "reasoning": message.additional_kwargs.get("reasoning_content") or None,
        "tool_calls": [dict(tc) for tc in message.tool_calls],
        "invalid_tool_calls": [dict(tc) for tc in message.invalid_tool_calls],
        "finish_reason": message.response_metadata.get("finish_reason"),
        "usage": _usage(message.usage_metadata),
    }


def record_message(record: Mapping[str, Any]) -> AIMessage:
    """A stored chat answer as the AIMessage the gateway's writers take."""
    extra = {"reasoning_content": record["reasoning"]} if record.get("reasoning") else {}
    return AIMessage(
        content=record.get("content") or "",
        tool_calls=list(record.get("tool_calls") or []),
        invalid_tool_calls=list(record.get("invalid_tool_calls") or []),
        additional_kwargs=extra,
        response_metadata={"finish_reason": record.get("finish_reason")},
        usage_metadata=record.get("usage"),
    )


def redis_display(url: str) -> str:
    """``url`` without its user and password (what logs may show)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "redis://(unparsable URL)"
    auth = "***@" if parts.username or parts.password else ""
    path = parts.path if parts.scheme != "unix" else "/(socket)"
    return f"{parts.scheme}://{auth}{host}{port}{path}"


@dataclass
class CacheLookup:
    """One request's dealings with the cache."""

    status: str
    """``hit``, ``miss``, ``bypass`` or ``unavailable`` (the :data:`HEADER` value)."""

    key: str | None = None
    record: dict[str, Any] | None = None

    @property
    def hit(self) -> bool:
        return self.status == "hit"

    @property
    def headers(self) -> dict[str, str]:
        return {HEADER: self.status}


@dataclass
class _Tap:
    """What a stream delivered so far (to store it once it ends whole)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tools: AIMessageChunk | None = None
    finish_reason: str | None = None
    usage: Any = None

    def add(self, chunk: AIMessageChunk) -> None:
        self.text.append(content_text(chunk.content))
        reasoning = chunk.additional_kwargs.get("reasoning_content")
        if isinstance(reasoning, str):
            self.reasoning.append(reasoning)
        if chunk.tool_call_chunks:
            piece = AIMessageChunk(content="", tool_call_chunks=chunk.tool_call_chunks)
            self.tools = piece if self.tools is None else self.tools + piece
        finish = chunk.response_metadata.get("finish_reason")
        if finish:
            self.finish_reason = finish
        if chunk.usage_metadata:
            self.usage = chunk.usage_metadata

    def record(self) -> dict[str, Any]:
        tools = self.tools
        return {
            "content": "".join(self.text),
            "reasoning": "".join(self.reasoning) or None,
            "tool_calls": [dict(tc) for tc in tools.tool_calls] if tools else [],
            "invalid_tool_calls": [dict(tc) for tc in tools.invalid_tool_calls] if tools else [],
            "finish_reason": self.finish_reason,
            "usage": _usage(self.usage),
        }


class ResponseCache:
    """The Redis response cache of one gateway process.

    ``settings``: the config's ``cache:`` section; ``models``: the config's model entries (their
    spec and params are part of each key); ``registry``: the app's Prometheus registry (the
    counter ``multillm_cache_lookups_total{model, result}`` goes there); ``redact``: the
    config's redaction of secrets (used on every logged error).
    """

    def __init__(
        self,
        settings: CacheSettings,
        models: list[ModelConfig],
        registry: Any = None,
        redact: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.settings = settings
        self.url = settings.redis.get_secret_value()
        self.where = redis_display(self.url)
        self.redact = redact
        self.entries = {m.name: m for m in models}
        self._client: Any = None
        self._down_until = 0.0
        self._down = False
        self.lookups: Any = None
        if registry is not None:
            from prometheus_client import Counter

            self.lookups = Counter(
                "multillm_cache_lookups",
                "Response cache lookups, by model and result (hit, miss, bypass, unavailable).",
                ["model", "result"],
                registry=registry,
            )

    # ---- Redis ----
    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            t = self.settings.timeout_s
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=t, socket_connect_timeout=t, retry_on_timeout=False
            )
        return self._client

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.settings.retry_s
        if not self._down:
            self._down = True
            log.warning(
                "response cache at %s unavailable (%s); answering from the models, retrying "
                "every %gs",
                self.where,
                self.redact(f"{type(exc).__name__}: {exc}").replace(self.url, self.where),
                self.settings.retry_s,
            )

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("response cache at %s is reachable again", self.where)

    def _skipping(self) -> bool:
        return self._down and time.monotonic() < self._down_until

    async def _op(self, fn: Callable[[Any], Any]) -> Any:
        """Run one Redis command within the timeout; raises what failed."""
        return await asyncio.wait_for(fn(self._redis()), timeout=self.settings.timeout_s * 2 + 0.5)

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # ---- keys ----
    def deterministic(self, model: Any, kwargs: Mapping[str, Any]) -> bool:
        """Temperature 0 or a seed: the request's, else the model's own setting."""
        temperature = kwargs.get("temperature")
        if temperature is None:
            temperature = getattr(model, "temperature", None)
        seed = kwargs.get("seed")
        if seed is None:
            seed = getattr(model, "seed", None)
        return temperature == 0 or seed is not None

    def key(self, name: str, route: str, request: Mapping[str, Any]) -> str:
        """The Redis key of a request to the served model ``name``."""
        entry = self.entries.get(name)
        shape = {
            "v": KEY_VERSION,
            "route": route,
            "model": name,
            "spec": entry.model if entry else None,
            "kind": entry.kind if entry else None,
            "params": _public(entry.params) if entry else None,
            "request": request,
        }
        digest = hashlib.sha256(_canonical(shape)).hexdigest()
        return f"{self.settings.prefix}:{KEY_VERSION}:{name}:{digest}"

    @staticmethod
    def chat_request(call: ChatCall) -> dict[str, Any]:
        """What of a chat call shapes its answer (``data`` and ``user`` do not)."""
        return {
            "messages": [_message_json(m) for m in call.messages],
            "kwargs": call.kwargs,
            "max_tokens": call.max_tokens,
            "stop": call.stop,
            "policy": call.policy,
        }

    @staticmethod
    def completion_request(call: CompletionCall) -> dict[str, Any]:
        return {
            "prompt": call.prompt,
            "kwargs": call.kwargs,
            "max_tokens": call.max_tokens,
            "stop": call.stop,
            "policy": call.policy,
        }

    # ---- lookups and stores ----
    async def lookup(self, name: str, route: str, model: Any, call: Any) -> CacheLookup:
        """Look a request up: never raises (Redis failing is ``unavailable``)."""
        if not self.deterministic(model, call.kwargs):
            return self._count(name, CacheLookup("bypass"))
        request = (
            self.chat_request(call) if hasattr(call, "messages") else self.completion_request(call)
        )
        key = self.key(name, route, request)
        if self._skipping():
            return self._count(name, CacheLookup("unavailable", key))
        try:
            raw = await self._op(lambda r: r.get(key))
        except Exception as exc:
            self._failed(exc)
            return self._count(name, CacheLookup("unavailable", key))
        self._ok()
        if raw is None:
            return self._count(name, CacheLookup("miss", key))
        try:
            record = json.loads(raw)
        except ValueError:
            return self._count(name, CacheLookup("miss", key))
        return self._count(name, CacheLookup("hit", key, record))

    def _count(self, name: str, lookup: CacheLookup) -> CacheLookup:
        if self.lookups is not None:
            self.lookups.labels(name, lookup.status).inc()
        return lookup

    async def store(self, lookup: CacheLookup | None, record: Mapping[str, Any]) -> bool:
        """Store a whole answer under the lookup's key (not one cut by ``max_tokens``); never
        raises. Whether it was stored."""
        if lookup is None or lookup.key is None or lookup.status not in ("miss", "unavailable"):
            return False
        if record.get("finish_reason") in _NOT_WHOLE:
            return False
        if self._skipping():
            return False
        value = _canonical(dict(record))
        key = lookup.key
        try:
            await self._op(lambda r: r.set(key, value, ex=self.settings.ttl))
        except Exception as exc:
            self._failed(exc)
            return False
        self._ok()
        return True

    async def store_chat(self, lookup: CacheLookup | None, message: AIMessage) -> bool:
        return await self.store(lookup, chat_record(message))

    def tap(
        self, lookup: CacheLookup | None, stream: AsyncIterator[AIMessageChunk]
    ) -> AsyncIterator[AIMessageChunk]:
        """``stream`` as it is, storing what it delivered once it ends whole (a stream that
        fails, or is closed before its end, stores nothing)."""
        if lookup is None or lookup.key is None or lookup.status not in ("miss", "unavailable"):
            return stream
        return self._tapped(lookup, stream)

    async def _tapped(
        self, lookup: CacheLookup, stream: AsyncIterator[AIMessageChunk]
    ) -> AsyncIterator[AIMessageChunk]:
        tap = _Tap()
        try:
            async for chunk in stream:
                tap.add(chunk)
                yield chunk
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await self.store(lookup, tap.record())


def _message_json(message: BaseMessage) -> dict[str, Any]:
    data = message.model_dump(mode="json", exclude={"id"})
    return {k: v for k, v in data.items() if v not in (None, {}, [])}
