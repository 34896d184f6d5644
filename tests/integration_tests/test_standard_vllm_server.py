"""langchain-tests' ChatModelIntegrationTests against the real vLLM CPU server."""

from __future__ import annotations

from typing import Any

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

    # vLLM parses tool calls from the model's text (hermes parser); SmolLM2-135M writes
    # malformed <tool_call> text that runs to the length limit, or arguments that are not an
    # object (reported as invalid_tool_calls). These are limits of the tiny model (PEERS.md).
    TINY = "SmolLM2-135M writes malformed <tool_call> text; a limit of the tiny model"

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason=TINY)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=TINY)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=TINY)
    def test_bind_runnables_as_tools(self, model: Any) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=TINY)
    def test_tool_choice(self, model: Any) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=TINY)
    def test_tool_calling_with_no_arguments(self, model: Any) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason=TINY)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=TINY)
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    @pytest.mark.xfail(
        reason="json_mode constrains to any JSON object; SmolLM2-135M nests the fields"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
