"""A running vLLM server (or any OpenAI-compatible server), over its HTTP API.

``ChatVLLMServer`` posts to ``/v1/chat/completions`` and ``VLLMServer`` to ``/v1/completions``
with one pooled ``httpx`` client each way (sync and async). vLLM's own routes add what the
OpenAI API lacks: the context window from ``/v1/models`` (``max_model_len``), exact counts from
``/tokenize`` (text, or messages through the served chat template), and ``/health``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import httpx
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import Generation, GenerationChunk
from langchain_core.utils import from_env, secret_from_env
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from langchain_multillm._base import (
    ChatRequest,
    CompletionRequest,
    ExtraBody,
    MinP,
    MultiLLMCompletionModel,
    Penalties,
    Prompt,
    RepetitionPenalty,
    Seed,
    TopK,
)
from langchain_multillm._http import (
    ClientCredentials,
    HealthProbe,
    HTTPConnection,
    LimitsProbe,
    Route,
    check_url,
    server_root,
    warn_insecure,
    with_api_path,
)
from langchain_multillm._openai import (
    CompletionStream,
    OpenAIChatOverHTTP,
    aiter_sse,
    completion_payload,
    completion_text,
    iter_sse,
    to_openai_messages,
)
from langchain_multillm.errors import (
    InvalidInputError,
    MultiLLMError,
    malformed_body,
)
from langchain_multillm.fit import Limits, TemplateBound, chat_bound

__all__ = ["ChatVLLMServer", "VLLMServer"]

BACKEND = "vllm-server"

# What a call may carry (besides the sampling keys every model takes; anything else is refused
# by name before sending; ``extra_body``, a dict, goes into the body unchecked, as the openai
# SDK's does). The OpenAI chat request's keys vLLM takes:
OPENAI_CHAT_PARAMS = frozenset(
    {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
        "user",
        "reasoning_effort",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
# The OpenAI completion request's keys vLLM takes:
OPENAI_COMPLETION_PARAMS = frozenset(
    {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "echo", "user"}
)
# vLLM's own sampling and request extras, on both routes (docs.vllm.ai, "OpenAI-Compatible
# Server", Extra Parameters; the guided_* keys of vLLM before structured_outputs included):
VLLM_EXTRA_PARAMS = frozenset(
    {
        "extra_body",
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "use_beam_search",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "prompt_logprobs",
        "allowed_token_ids",
        "bad_words",
        "add_special_tokens",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "priority",
        "request_id",
        "logits_processors",
        "return_tokens_as_token_ids",
        "return_token_ids",
        "cache_salt",
        "kv_transfer_params",
        "vllm_xargs",
    }
)
# ... and the chat route's own (the chat template's inputs, reasoning output):
VLLM_CHAT_EXTRA_PARAMS = frozenset(
    {
        "echo",
        "add_generation_prompt",
        "continue_final_message",
        "documents",
        "chat_template",
        "chat_template_kwargs",
        "mm_processor_kwargs",
        "include_reasoning",
        "structural_tag",
    }
)


def _base_url_from_env() -> str | None:
    """``VLLM_BASE_URL`` (the URL with ``/v1``), else ``LLM_MODEL_SERVER_ENDPOINT``: the LLM
    microservice's variable, a server's root, so ``/v1`` is added where it is missing."""
    if "VLLM_BASE_URL" in os.environ:
        return os.environ["VLLM_BASE_URL"]
    endpoint = os.environ.get("LLM_MODEL_SERVER_ENDPOINT", "").strip()
    return with_api_path(endpoint, "/v1") if endpoint else None


def _limits_from_models(model: _ServerConnection, body: Any) -> Limits:
    """``GET /models``: the configured model's card gives the window (``max_model_len``)."""
    try:
        cards = body["data"]
    except (KeyError, TypeError):
        raise malformed_body("GET /models has no data list", body=body, backend=BACKEND) from None
    for card in cards:
        if card.get("id") == model.model_name and card.get("max_model_len"):
            return Limits(context_window=int(card["max_model_len"]))
    return Limits()


class _ServerConnection(HTTPConnection, TopK, MinP, RepetitionPenalty, Penalties, Seed, ExtraBody):
    """Connection settings and vLLM's extra routes, shared by the chat and completion classes."""

    model_name: str = Field(
        default_factory=from_env(["VLLM_MODEL", "LLM_MODEL_NAME"], default=""), alias="model"
    )
    """Served model name (env ``VLLM_MODEL``, then ``LLM_MODEL_NAME``)."""

    base_url: str | None = Field(default_factory=_base_url_from_env, alias="openai_api_base")
    """Server URL with ``/v1`` (env ``VLLM_BASE_URL``; else ``LLM_MODEL_SERVER_ENDPOINT``, the
    server's root, with ``/v1`` added where it does not end with it)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env(["VLLM_API_KEY", "LLM_VLLM_API_KEY"], default=None)
    )
    """Static bearer key (env ``VLLM_API_KEY``, then ``LLM_VLLM_API_KEY``); wins over OAuth2."""

    oauth_client_id: str | None = Field(
        default_factory=from_env("LLM_VLLM_CLIENT_ID", default=None)
    )
    """OAuth2 client-credentials client id (env ``LLM_VLLM_CLIENT_ID``)."""

    oauth_client_secret: SecretStr | None = Field(
        default_factory=secret_from_env("LLM_VLLM_CLIENT_SECRET", default=None)
    )
    """OAuth2 client secret (env ``LLM_VLLM_CLIENT_SECRET``)."""

    oauth_token_url: str | None = Field(
        default_factory=from_env("LLM_VLLM_TOKEN_URL", default=None)
    )
    """OAuth2 token endpoint (env ``LLM_VLLM_TOKEN_URL``)."""

    oauth_scope: str | None = None
    """OAuth2 scope to ask for, if the identity provider wants one."""

    _backend: ClassVar[str] = BACKEND
    # /health says whether the server can answer (a 5xx, or no answer: down); /models whether
    # it serves the configured model, and its window. A server without a health route (404:
    # llama.cpp's server and others) is judged by /models alone.
    _health_probe = HealthProbe(
        status=Route("/health"),
        status_optional=True,
        models=Route("/models", base="api"),
        served=lambda model, body: [c.get("id") for c in body.get("data", [])],
        window=lambda model, body: _limits_from_models(model, body).context_window,
    )
    _limits_probe = LimitsProbe(Route("/models", base="api"), read=_limits_from_models)
    _auth: httpx.Auth | None = PrivateAttr(default=None)
    _bound: TemplateBound | None = PrivateAttr(default=None)
    _tokenize: bool | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        return check_url("base_url", v)

    @model_validator(mode="after")
    def _check_connection(self) -> _ServerConnection:
        if not self.model_name.strip():
            raise InvalidInputError(
                "model", "is required: pass model=... or set VLLM_MODEL (or LLM_MODEL_NAME)"
            )
        if not self.base_url:
            raise InvalidInputError(
                "base_url",
                "is required: pass base_url=... or set VLLM_BASE_URL (e.g. http://host:8000/v1)",
            )
        oauth = [self.oauth_client_id, self.oauth_client_secret, self.oauth_token_url]
        if any(oauth) and not all(oauth) and self.api_key is None:
            raise InvalidInputError(
                "oauth_client_id/oauth_client_secret/oauth_token_url",
                "all three are needed for OAuth2 client credentials",
            )
        check_url("oauth_token_url", self.oauth_token_url)
        if not self.verify_ssl:
            warn_insecure()
        return self

    @property
    def _root(self) -> str:
        assert self.base_url
        return server_root(self.base_url)

    def _auth_flow(self) -> httpx.Auth | None:
        if self.api_key is not None or not self.oauth_client_id:
            return None
        if self._auth is None:
            assert self.oauth_token_url
            assert self.oauth_client_secret
            self._auth = ClientCredentials(
                self.oauth_token_url,
                self.oauth_client_id,
                self.oauth_client_secret,
                scope=self.oauth_scope,
                verify=self.verify_ssl,
            )
        return self._auth

    # ---- discovery (``_limits_probe``: /models) ----
    def _measure_template(self) -> None:
        if self._tokenize_available():
            self._bound = TemplateBound.measure(self._count_messages)

    async def _ameasure_template(self) -> None:
        if await self._atokenize_available():
            self._bound = await TemplateBound.ameasure(self._acount_messages)

    def _tokenize_available(self) -> bool:
        """Whether ``/tokenize`` counts this model (asked once, with the model's name: a
        gateway may count one model exactly and not another)."""
        if self._tokenize is None:
            try:
                self._post_json(f"{self._root}/tokenize", {"model": self.model_name, "prompt": "a"})
                self._tokenize = True
            except (MultiLLMError, InvalidInputError):
                self._tokenize = False
        return self._tokenize

    async def _atokenize_available(self) -> bool:
        if self._tokenize is None:
            try:
                body = {"model": self.model_name, "prompt": "a"}
                await self._apost_json(f"{self._root}/tokenize", body)
                self._tokenize = True
            except (MultiLLMError, InvalidInputError):
                self._tokenize = False
        return self._tokenize

    def _no_exact_count(self, exc: MultiLLMError) -> bool:
        """A ``/tokenize`` that says it cannot count this model exactly (501, as the gateway
        ``multillm serve`` answers for a backend with bounds only): no exact count here, not a
        failure; the bounds decide from now on."""
        if exc.status_code != 501:
            return False
        self._tokenize = False
        return True

    def _count_output(self, text: str) -> int:
        """Tokens of generated text (no BOS or other special tokens added)."""
        body = {"model": self.model_name, "prompt": text, "add_special_tokens": False}
        return _count_of(self._post_json(f"{self._root}/tokenize", body)) if text else 0

    async def _acount_output(self, text: str) -> int:
        body = {"model": self.model_name, "prompt": text, "add_special_tokens": False}
        return _count_of(await self._apost_json(f"{self._root}/tokenize", body)) if text else 0

    def _tokenize_body(self, prompt: Prompt | list[dict[str, Any]]) -> dict[str, Any]:
        model = self.model_name
        if isinstance(prompt, list):
            return {"model": model, "messages": prompt, "add_generation_prompt": True}
        if prompt.text is not None:
            return {"model": model, "prompt": prompt.text}
        body: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(prompt.messages or []),
            "add_generation_prompt": True,
        }
        if prompt.tools:
            body["tools"] = prompt.tools
        return body

    def _count_messages(self, messages: list[dict[str, Any]]) -> int:
        return _count_of(self._post_json(f"{self._root}/tokenize", self._tokenize_body(messages)))

    async def _acount_messages(self, messages: list[dict[str, Any]]) -> int:
        return _count_of(
            await self._apost_json(f"{self._root}/tokenize", self._tokenize_body(messages))
        )

    def _count_exact(self, prompt: Prompt) -> int | None:
        if not self._tokenize_available():
            return None
        try:
            body = self._post_json(f"{self._root}/tokenize", self._tokenize_body(prompt))
        except MultiLLMError as exc:
            if self._no_exact_count(exc):
                return None
            raise
        return _count_of(body)

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        if not await self._atokenize_available():
            return None
        try:
            body = await self._apost_json(f"{self._root}/tokenize", self._tokenize_body(prompt))
        except MultiLLMError as exc:
            if self._no_exact_count(exc):
                return None
            raise
        return _count_of(body)

    def _count_bound(self, prompt: Prompt) -> int | None:
        if self._bound is None and self._tokenize is not False:
            return None  # not measured yet, or the server can count: wait for exact
        return chat_bound(prompt, self._bound)


def _count_of(body: Any) -> int:
    try:
        return int(body["count"])
    except (KeyError, TypeError, ValueError):
        raise malformed_body("/tokenize gave no count", body=body, backend=BACKEND) from None


class ChatVLLMServer(_ServerConnection, OpenAIChatOverHTTP):
    """Chat with a model on a running vLLM server (or another OpenAI-compatible server).

    Example:
        ```python
        from langchain_multillm import ChatVLLMServer

        llm = ChatVLLMServer(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
        llm.check_fit("Hello!", max_tokens=256)  # exact, from the server's /tokenize
        llm.invoke("Hello!")
        ```
    """

    _backend = BACKEND
    _call_params = OPENAI_CHAT_PARAMS | VLLM_EXTRA_PARAMS | VLLM_CHAT_EXTRA_PARAMS

    @property
    def _llm_type(self) -> str:
        return "vllm-server-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {
            "api_key": "VLLM_API_KEY",
            "oauth_client_secret": "LLM_VLLM_CLIENT_SECRET",
        }

    # Where a server sends no usage in a stream, count it with /tokenize (exact), if it can.
    def _usage_fallback(self, req: ChatRequest) -> Callable[[str], UsageMetadata | None] | None:
        def fill(text: str) -> UsageMetadata | None:
            if not self.stream_usage or not self._tokenize_available():
                return None
            p = self._count_exact(Prompt(messages=req.messages, tools=req.tools))
            if p is None:  # the server said it cannot count exactly: no usage, never a guess
                return None
            o = self._count_output(text)
            return UsageMetadata(input_tokens=p, output_tokens=o, total_tokens=p + o)

        return fill

    def _ausage_fallback(
        self, req: ChatRequest
    ) -> Callable[[str], Awaitable[UsageMetadata | None]] | None:
        async def fill(text: str) -> UsageMetadata | None:
            if not self.stream_usage or not await self._atokenize_available():
                return None
            p = await self._acount_exact(Prompt(messages=req.messages, tools=req.tools))
            if p is None:  # the server said it cannot count exactly: no usage, never a guess
                return None
            o = await self._acount_output(text)
            return UsageMetadata(input_tokens=p, output_tokens=o, total_tokens=p + o)

        return fill

    def _chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


class VLLMServer(_ServerConnection, MultiLLMCompletionModel):
    """Text completion on a running vLLM server (``/v1/completions``).

    Follows LangChain's ``BaseLLM`` input contract, so ``ChatPromptTemplate | VLLMServer(...)``
    works (the prompt value becomes text).
    """

    _backend = BACKEND
    _call_params = OPENAI_COMPLETION_PARAMS | VLLM_EXTRA_PARAMS

    @property
    def _llm_type(self) -> str:
        return "vllm-server"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "VLLM_API_KEY", "oauth_client_secret": "LLM_VLLM_CLIENT_SECRET"}

    def _generation(
        self, text: str, finish: str, usage: dict[str, Any] | None, model: str
    ) -> Generation:
        info: dict[str, Any] = {"finish_reason": finish, "model_name": model}
        if usage:
            info["usage"] = usage
        return Generation(text=text, generation_info=info)

    def _complete(self, req: CompletionRequest) -> Generation:
        assert self.base_url
        model = req.params.get("model", self.model_name)
        body = self._post_json(
            f"{self.base_url}/completions",
            completion_payload(req.prompt, req.params, model, stream=False, stream_usage=False),
        )
        text, finish, usage = completion_text(body, backend=BACKEND)
        return self._generation(text, finish, usage, body.get("model") or model)

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        assert self.base_url
        model = req.params.get("model", self.model_name)
        body = await self._apost_json(
            f"{self.base_url}/completions",
            completion_payload(req.prompt, req.params, model, stream=False, stream_usage=False),
        )
        text, finish, usage = completion_text(body, backend=BACKEND)
        return self._generation(text, finish, usage, body.get("model") or model)

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        assert self.base_url
        model = req.params.get("model", self.model_name)
        payload = completion_payload(req.prompt, req.params, model, stream=True, stream_usage=True)
        yield from CompletionStream(backend=BACKEND, model=model).run(
            self._sse(f"{self.base_url}/completions", payload, iter_sse)
        )

    async def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        assert self.base_url
        model = req.params.get("model", self.model_name)
        payload = completion_payload(req.prompt, req.params, model, stream=True, stream_usage=True)
        state = CompletionStream(backend=BACKEND, model=model)
        events = self._asse(f"{self.base_url}/completions", payload, aiter_sse)
        async for chunk in state.arun(events):
            yield chunk
