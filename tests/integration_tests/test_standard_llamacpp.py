"""langchain-tests' standard chat-model suites for ChatLlamaCpp, on the real engine."""

from __future__ import annotations

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


class TestChatLlamaCppIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLlamaCpp]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict:
        return _params()

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
