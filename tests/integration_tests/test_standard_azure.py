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

pytestmark = [pytest.mark.azure, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(azure_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", azure_server_url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", peers.AZURE_FIXTURE_KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", peers.AZURE_API_VERSION)


class TestChatAzureOpenAIIntegration(ChatModelIntegrationTests):
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

    # Limits of the tiny model, not of ChatAzureOpenAI: the fixture constrains JSON mode to a
    # JSON object and a forced tool call to the tool's schema, but SmolLM2-135M fills them with
    # the wrong content.
    @pytest.mark.xfail(
        reason="SmolLM2-135M answers JSON mode with nested objects, not the asked "
        "setup/punchline strings"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not copy the Japanese name into the forced call")
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    # The fixture constrains the answer to the schema (as the service's structured outputs
    # do), but SmolLM2-135M often repeats itself inside the first string until max_tokens (100)
    # cuts the JSON before the second field. The mark covers each test whole (langchain-tests
    # wants overrides marked); the typeddict and json_schema cases usually pass (XPASS).
    LOOPS = "SmolLM2-135M loops inside 'setup' until max_tokens cuts the JSON"

    @pytest.mark.xfail(reason=LOOPS)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=LOOPS)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=LOOPS)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)
