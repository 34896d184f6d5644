"""``load_chat_model("provider:model", ...)``: any chat model from one string."""

from __future__ import annotations

import importlib
from typing import Any

from langchain_multillm.errors import InvalidInputError

__all__ = ["COMPLETION_PROVIDERS", "PROVIDERS", "load_chat_model", "load_completion_model"]

# provider -> (module, class, the field the model part of the string goes to)
PROVIDERS: dict[str, tuple[str, str, str]] = {
    "vllm-server": ("langchain_multillm.backends.vllm_server", "ChatVLLMServer", "model"),
    "vllm": ("langchain_multillm.backends.vllm", "ChatVLLM", "model"),
    "llamacpp": ("langchain_multillm.backends.llamacpp", "ChatLlamaCpp", "model_path"),
    "tgi": ("langchain_multillm.backends.tgi", "ChatTGI", "model"),
    "deepseek": ("langchain_multillm.backends.deepseek", "ChatDeepSeek", "model"),
    "gemini": ("langchain_multillm.backends.gemini", "ChatGemini", "model"),
    "azure": ("langchain_multillm.backends.azure", "ChatAzureOpenAI", "azure_deployment"),
}

# The completion (text in, text out) models, for the providers that have one.
COMPLETION_PROVIDERS: dict[str, tuple[str, str, str]] = {
    "vllm-server": ("langchain_multillm.backends.vllm_server", "VLLMServer", "model"),
    "vllm": ("langchain_multillm.backends.vllm", "VLLM", "model"),
    "llamacpp": ("langchain_multillm.backends.llamacpp", "LlamaCpp", "model_path"),
    "tgi": ("langchain_multillm.backends.tgi", "TGI", "model"),
}


def load_chat_model(spec: str, **kwargs: Any) -> Any:
    """Build a chat model from ``"provider:model"``, importing only that backend.

    ``load_chat_model("vllm-server:Qwen/Qwen2.5-7B-Instruct", base_url="http://host:8000/v1")``;
    ``load_chat_model("llamacpp:/models/x.gguf")`` (``"llamacpp:"`` alone: the bundled model).
    """
    return _load(PROVIDERS, spec, kwargs)


def load_completion_model(spec: str, **kwargs: Any) -> Any:
    """Build a completion model (``BaseLLM``) from ``"provider:model"``, as
    :func:`load_chat_model` builds chat models (providers: :data:`COMPLETION_PROVIDERS`)."""
    return _load(COMPLETION_PROVIDERS, spec, kwargs)


def _load(table: dict[str, tuple[str, str, str]], spec: str, kwargs: dict[str, Any]) -> Any:
    provider, sep, model = spec.partition(":")
    if not sep or provider not in table:
        raise InvalidInputError(
            "spec",
            f"must be 'provider:model' with provider one of {sorted(table)}; got {spec!r}",
        )
    module, cls_name, field = table[provider]
    cls = getattr(importlib.import_module(module), cls_name)
    if model:
        kwargs.setdefault(field, model)
    return cls(**kwargs)
