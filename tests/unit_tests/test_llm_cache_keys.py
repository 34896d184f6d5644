"""The string LangChain's llm caches key on (``_get_llm_string``, what ``set_llm_cache`` caches
use with the prompt) for every chat model of this package: the same settings give the same
key, any setting that changes the answer gives another, and no credential is in it.

Built without a peer (nothing is sent). ChatVLLM needs vLLM to be built: where vLLM is not
installed it is made with pydantic's ``model_construct`` (its fields, no engine), which is all
its key reads. The Redis round trip of each model is tests/integration_tests/
test_llm_cache_redis.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

from tests import peers

SECRET = "sk-cache-key-secret-91fe"
HEADER_SECRET = "Bearer header-secret-7d20"


def _llamacpp(**kw: Any) -> Any:
    from langchain_multillm import ChatLlamaCpp

    try:
        path = peers.smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(f"the bundled GGUF is not installed ({exc}); run `make install`")
    return ChatLlamaCpp(**{"model_path": path, "n_ctx": 512, **kw})


def _vllm_server(**kw: Any) -> Any:
    from langchain_multillm import ChatVLLMServer

    base = {"base_url": "http://127.0.0.1:9/v1", "model": "smollm2", "api_key": SECRET}
    return ChatVLLMServer(**{**base, **kw})


def _tgi(**kw: Any) -> Any:
    from langchain_multillm import ChatTGI

    return ChatTGI(**{"base_url": "http://127.0.0.1:9", "api_key": SECRET, **kw})


def _deepseek(**kw: Any) -> Any:
    from langchain_multillm import ChatDeepSeek

    return ChatDeepSeek(**{"base_url": "http://127.0.0.1:9", "api_key": SECRET, **kw})


def _azure(**kw: Any) -> Any:
    from langchain_multillm import ChatAzureOpenAI

    base = {
        "azure_endpoint": "http://127.0.0.1:9",
        "api_key": SECRET,
        "azure_deployment": "gpt-4o",
        "api_version": "2024-10-21",
        "default_headers": {"Authorization": HEADER_SECRET},
    }
    return ChatAzureOpenAI(**{**base, **kw})


def _gemini(**kw: Any) -> Any:
    from langchain_multillm import ChatGemini

    base = {
        "base_url": "http://127.0.0.1:9",
        "api_key": "AIza" + SECRET,
        "model": "gemini-2.5-flash",
    }
    return ChatGemini(**{**base, **kw})


def _vllm(**kw: Any) -> Any:
    from langchain_multillm import ChatVLLM

    settings = {"model": "/models/smollm2", **kw}
    if importlib.util.find_spec("vllm") is not None:
        return ChatVLLM(**settings)
    settings["model_name"] = settings.pop("model")
    return ChatVLLM.model_construct(**settings)


# model -> (builder, settings that change its answers, with a second value each)
MODELS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "ChatLlamaCpp": (_llamacpp, {"seed": 2, "top_k": 5, "min_p": 0.1, "n_ctx": 1024}),
    "ChatVLLMServer": (_vllm_server, {"seed": 2, "base_url": "http://127.0.0.1:10/v1"}),
    "ChatTGI": (_tgi, {"seed": 2, "base_url": "http://127.0.0.1:10"}),
    "ChatDeepSeek": (_deepseek, {"presence_penalty": 0.5, "base_url": "http://127.0.0.1:10"}),
    "ChatAzureOpenAI": (_azure, {"seed": 2, "azure_endpoint": "http://127.0.0.1:10"}),
    "ChatGemini": (_gemini, {"seed": 2, "top_k": 3, "base_url": "http://127.0.0.1:10"}),
    "ChatVLLM": (_vllm, {"seed": 2, "top_k": 3, "model": "/models/other"}),
}
COMMON = {"temperature": 0.0, "max_tokens": 8, "top_p": 0.9}


@pytest.mark.parametrize("name", list(MODELS))
def test_cache_key_tells_answers_apart_and_holds_no_secret(name: str) -> None:
    build, changes = MODELS[name]
    key = build(**COMMON)._get_llm_string()
    assert build(**COMMON)._get_llm_string() == key  # another instance, same settings
    for field, value in {**changes, "temperature": 0.5, "max_tokens": 9, "top_p": 0.5}.items():
        other = build(**{**COMMON, field: value})._get_llm_string()
        assert other != key, f"{name}: {field} does not change the cache key"
    model = build(**COMMON)
    assert model._get_llm_string(temperature=0.7) != key  # a call parameter
    assert model._get_llm_string(stop=["\n"]) != key
    for secret in (SECRET, HEADER_SECRET, "header-secret"):
        assert secret not in key
