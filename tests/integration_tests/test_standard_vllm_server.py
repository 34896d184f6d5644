"""langchain-tests' ChatModelIntegrationTests against the real vLLM CPU server."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_multillm import ChatVLLMServer

pytestmark = [pytest.mark.vllm_server, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(vllm_server_url: str) -> None:
    """Starts the server and exports VLLM_BASE_URL, which the models read."""


class TestChatVLLMServerIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatVLLMServer]:
        return ChatVLLMServer

    @property
    def chat_model_params(self) -> dict:
        # The suite sets no max_tokens; the tiny model would otherwise fill the window.
        return {"model": "smollm2", "seed": 1, "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
