"""langchain-multillm: every common way of running an LLM, as LangChain chat models.

Public names load lazily (PEP 562), so ``import langchain_multillm`` imports no backend SDK or
engine; ``from langchain_multillm import ChatLlamaCpp`` imports llama.cpp's module only when the
model is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_multillm.backends.azure import ChatAzureOpenAI
    from langchain_multillm.backends.deepseek import ChatDeepSeek
    from langchain_multillm.backends.gemini import ChatGemini
    from langchain_multillm.backends.llamacpp import ChatLlamaCpp, LlamaCpp
    from langchain_multillm.backends.tgi import TGI, ChatTGI
    from langchain_multillm.backends.vllm import VLLM, ChatVLLM
    from langchain_multillm.backends.vllm_server import ChatVLLMServer, VLLMServer
    from langchain_multillm.chains import create_rag_chain, create_summarize_chain
    from langchain_multillm.errors import (
        AuthenticationError,
        BackendError,
        BackendTimeoutError,
        BackendUnavailableError,
        BadRequestError,
        ContentFilteredError,
        ContextWindowExceededError,
        IncompleteResponseError,
        InvalidInputError,
        ModelNotFoundError,
        MultiLLMError,
        PermissionDeniedError,
        RateLimitError,
    )
    from langchain_multillm.fit import FitReport, Limits
    from langchain_multillm.health import HealthReport
    from langchain_multillm.loader import load_chat_model
    from langchain_multillm.routing import ChatRouter

# The one place the version is written: pyproject.toml reads it ([tool.hatch.version]).
__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ChatLlamaCpp": "langchain_multillm.backends.llamacpp",
    "LlamaCpp": "langchain_multillm.backends.llamacpp",
    "ChatVLLMServer": "langchain_multillm.backends.vllm_server",
    "ChatVLLM": "langchain_multillm.backends.vllm",
    "VLLM": "langchain_multillm.backends.vllm",
    "ChatTGI": "langchain_multillm.backends.tgi",
    "ChatAzureOpenAI": "langchain_multillm.backends.azure",
    "ChatDeepSeek": "langchain_multillm.backends.deepseek",
    "ChatGemini": "langchain_multillm.backends.gemini",
    "TGI": "langchain_multillm.backends.tgi",
    "VLLMServer": "langchain_multillm.backends.vllm_server",
    "FitReport": "langchain_multillm.fit",
    "Limits": "langchain_multillm.fit",
    "HealthReport": "langchain_multillm.health",
    "load_chat_model": "langchain_multillm.loader",
    "ChatRouter": "langchain_multillm.routing",
    "create_rag_chain": "langchain_multillm.chains",
    "create_summarize_chain": "langchain_multillm.chains",
    **dict.fromkeys(
        (
            "AuthenticationError",
            "BackendError",
            "BackendTimeoutError",
            "BackendUnavailableError",
            "BadRequestError",
            "ContentFilteredError",
            "ContextWindowExceededError",
            "IncompleteResponseError",
            "InvalidInputError",
            "ModelNotFoundError",
            "MultiLLMError",
            "PermissionDeniedError",
            "RateLimitError",
        ),
        "langchain_multillm.errors",
    ),
}

__all__ = [
    "TGI",
    "VLLM",
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BadRequestError",
    "ChatAzureOpenAI",
    "ChatDeepSeek",
    "ChatGemini",
    "ChatLlamaCpp",
    "ChatRouter",
    "ChatTGI",
    "ChatVLLM",
    "ChatVLLMServer",
    "ContentFilteredError",
    "ContextWindowExceededError",
    "FitReport",
    "HealthReport",
    "IncompleteResponseError",
    "InvalidInputError",
    "Limits",
    "LlamaCpp",
    "ModelNotFoundError",
    "MultiLLMError",
    "PermissionDeniedError",
    "RateLimitError",
    "VLLMServer",
    "__version__",
    "create_rag_chain",
    "create_summarize_chain",
    "load_chat_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_multillm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
