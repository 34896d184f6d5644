"""DeepSeek's API (OpenAI wire format): ``deepseek-chat`` and ``deepseek-reasoner``.

``reasoning_content`` (the reasoner's chain of thought) is kept on the message, in
``additional_kwargs``, and in streamed chunks; it is never sent back in later turns (the API
answers 400 if it is). DeepSeek's tokenizer is not available offline, so counts are a
conservative bound (``exact=False`` in fit reports) that never under-counts. Health is
``GET /models``: authenticated, and free.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr, field_validator, model_validator

from langchain_multillm._base import Prompt
from langchain_multillm._http import check_url
from langchain_multillm._openai import OpenAIChatOverHTTP, StructuredMethod
from langchain_multillm.errors import (
    AuthenticationError,
    InvalidInputError,
    MultiLLMError,
    PermissionDeniedError,
)
from langchain_multillm.fit import Limits, chat_bound
from langchain_multillm.health import HealthReport, describe, not_ready, probe_failed

__all__ = ["ChatDeepSeek"]

BACKEND = "deepseek"
DEFAULT_BASE_URL = "https://api.deepseek.com"

# Limits per model, from DeepSeek's model documentation (context window, most output tokens).
MODEL_LIMITS: dict[str, Limits] = {
    "deepseek-chat": Limits(context_window=128_000, max_output_tokens=8_192),
    "deepseek-reasoner": Limits(context_window=128_000, max_output_tokens=65_536),
}


# What a call may carry besides the sampling keys every model takes (the chat request's keys
# DeepSeek's API documents); anything else is refused by name before sending.
CALL_PARAMS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)


class ChatDeepSeek(OpenAIChatOverHTTP):
    """Chat with DeepSeek's models.

    Example:
        ```python
        from langchain_multillm import ChatDeepSeek

        llm = ChatDeepSeek(model="deepseek-reasoner")   # DEEPSEEK_API_KEY from the environment
        msg = llm.invoke("How many r's are in strawberry?")
        msg.additional_kwargs["reasoning_content"]      # the reasoning, kept, never sent back
        msg.usage_metadata                              # cache hits, reasoning tokens
        ```
    """

    model_name: str = Field(
        default_factory=from_env("DEEPSEEK_MODEL", default="deepseek-chat"), alias="model"
    )
    """``deepseek-chat`` or ``deepseek-reasoner`` (env ``DEEPSEEK_MODEL``)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("DEEPSEEK_API_KEY", default=None)
    )
    """DeepSeek API key (env ``DEEPSEEK_API_KEY``). Required."""

    base_url: str = Field(
        default_factory=from_env("DEEPSEEK_API_BASE", default=DEFAULT_BASE_URL),
        alias="api_base",
    )
    """API root (env ``DEEPSEEK_API_BASE``; default ``https://api.deepseek.com``)."""

    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty on tokens already present (-2 to 2)."""

    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty by how often a token appeared (-2 to 2)."""

    default_structured_method: StructuredMethod = "function_calling"
    """DeepSeek has JSON mode and tools, but no JSON-schema constrained decoding."""

    _backend: ClassVar[str] = BACKEND
    _call_params = CALL_PARAMS

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        return check_url("base_url", v) or v

    @model_validator(mode="after")
    def _check_key(self) -> ChatDeepSeek:
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise InvalidInputError(
                "api_key", "is required: pass api_key=... or set DEEPSEEK_API_KEY"
            )
        return self

    @property
    def _llm_type(self) -> str:
        return "deepseek-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "DEEPSEEK_API_KEY"}

    def _default_params(self) -> dict[str, Any]:
        extra = {
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        return {**super()._default_params(), **{k: v for k, v in extra.items() if v is not None}}

    def _chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # ---- limits and counts: a table, and a bound ----
    def _fetch_limits(self) -> Limits:
        return MODEL_LIMITS.get(self.model_name, Limits())

    async def _afetch_limits(self) -> Limits:
        return self._fetch_limits()

    def _count_bound(self, prompt: Prompt) -> int | None:
        return chat_bound(prompt, None)

    # ---- health: GET /models ----
    def _judge(self, started: float, body: Any) -> HealthReport:
        served = [m.get("id") for m in body.get("data", [])] if isinstance(body, dict) else []
        ready = self.model_name in served
        return HealthReport(
            alive=True,
            ready=ready,
            latency_s=time.perf_counter() - started,
            model=self.model_name,
            context_window=self.get_limits().context_window,
            detail=f"serving {self.model_name}"
            if ready
            else f"{self.model_name!r} is not offered; the API has {served}",
        )

    def _refused(self, started: float, exc: MultiLLMError) -> HealthReport:
        """``GET /models`` failed: a refusal (the key, a rate limit) is alive, not ready; no
        answer, or a 5xx (503 overloaded), is down."""
        if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
            return not_ready(started, self.model_name, f"the API refused the key: {describe(exc)}")
        return probe_failed(started, self.model_name, "GET /models failed", exc)

    def _health(self) -> HealthReport:
        started = time.perf_counter()
        try:
            body = self._get_json(f"{self.base_url}/models", timeout=self.health_timeout)
        except MultiLLMError as exc:
            return self._refused(started, exc)
        return self._judge(started, body)

    async def _ahealth(self) -> HealthReport:
        started = time.perf_counter()
        try:
            body = await self._aget_json(f"{self.base_url}/models", timeout=self.health_timeout)
        except MultiLLMError as exc:
            return self._refused(started, exc)
        return self._judge(started, body)
