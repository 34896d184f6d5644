"""langchain-tests' ChatModelIntegrationTests for ChatAzureOpenAI against the Azure OpenAI
protocol fixture (tests/fixtures/azure_server.py: API version 2024-10-21, every request and
response validated against Azure's spec, generating with the bundled SmolLM2). The endpoint,
key and API version come from the environment, as a user's would."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_multillm import ChatAzureOpenAI
from tests import peers
from tests.integration_tests.tiny_model import (
    ARGUMENT_VALUE,
    JSON_MODE_KEYS,
    NON_EMPTY_ARGUMENT,
    UNFORCED_CALL,
    UNICODE_COPY,
    ShortPlainAnswers,
    skill,
)

pytestmark = [pytest.mark.azure, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(azure_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", azure_server_url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", peers.AZURE_FIXTURE_KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", peers.AZURE_API_VERSION)


class TestChatAzureOpenAIIntegration(ShortPlainAnswers, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatAzureOpenAI]:
        return ChatAzureOpenAI

    @property
    def chat_model_params(self) -> dict:
        # The suite sets no max_tokens; the tiny model would otherwise fill the window.
        return {"azure_deployment": peers.AZURE_DEPLOYMENT, "temperature": 0, "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # The fixture constrains a forced call to the tool's schema, and JSON mode to a JSON object,
    # bounded to close within max_tokens; what a test asserts beyond that is the model's.
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @skill(ARGUMENT_VALUE)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @skill(ARGUMENT_VALUE)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @skill(NON_EMPTY_ARGUMENT)
    def test_bind_runnables_as_tools(self, model: Any) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @skill(UNFORCED_CALL)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @skill(JSON_MODE_KEYS)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @skill(UNICODE_COPY)
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
