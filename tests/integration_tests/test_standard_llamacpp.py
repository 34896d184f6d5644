"""langchain-tests' standard chat-model suites for ChatLlamaCpp, on the real engine."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_multillm import ChatLlamaCpp
from tests import peers

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _engine(llama_cpp_available: str) -> None:
    """The standard tests build their own models; this only makes sure the engine exists."""


def _params() -> dict:
    try:
        path = peers.smollm2_gguf_path()
    except FileNotFoundError:
        path = "/nonexistent.gguf"
    return {"model_path": path, "seed": 1}


class TestChatLlamaCppUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLlamaCpp]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict:
        return _params()

    @property
    def standard_chat_model_params(self) -> dict:
        # An in-process model has no API key and no HTTP timeout, and this package's models
        # refuse settings they do not have (tests/unit_tests/test_settings.py), so the unit
        # suite's api_key="test" and timeout=60 are left out here.
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in ("api_key", "timeout")}


class TestChatLlamaCppIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLlamaCpp]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict:
        # The integration suite sets no max_tokens: without one the tiny model talks until the
        # window is full (2048 tokens, ~25 s a call), so cap it as PEERS.md advises.
        return {**_params(), "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # Each xfail below is a limit of the 135M-parameter model or of llama-cpp-python's chat
    # handler, not of this package; strict=False because sampling sometimes gets lucky.

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason="SmolLM2-135M fills the forced, schema-valid call with a wrong argument"
    )
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(
        reason="SmolLM2-135M fills the forced, schema-valid call with a wrong argument"
    )
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(
        reason="json_mode constrains to any JSON object; SmolLM2-135M nests the fields"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="unforced tool calls: SmolLM2's template does not render tools and llama-cpp-python "
        "parses tool calls only when one is forced"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not copy the Japanese text into the call")
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
