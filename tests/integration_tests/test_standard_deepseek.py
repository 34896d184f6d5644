"""langchain-tests' ChatModelIntegrationTests for ChatDeepSeek against the DeepSeek protocol
fixture (tests/fixtures/deepseek_server.py: spec-validated, generating with the bundled
SmolLM2). The endpoint and the key come from the environment, as a user's would."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_multillm import ChatDeepSeek

pytestmark = [pytest.mark.deepseek, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(deepseek_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSEEK_API_BASE", deepseek_server_url)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-fixture")


class TestChatDeepSeekIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatDeepSeek]:
        return ChatDeepSeek

    @property
    def chat_model_params(self) -> dict:
        # The suite sets no max_tokens; the tiny model would otherwise fill the window.
        return {"model": "deepseek-chat", "temperature": 0, "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "deepseek-reasoner"

    # Limits of the tiny model, not of ChatDeepSeek: the fixture's JSON mode constrains the
    # answer to a JSON object (as DeepSeek's does, without a schema), and its tool grammar to the
    # tool's schema, but SmolLM2-135M fills them with the wrong content.
    @pytest.mark.xfail(
        reason="SmolLM2-135M answers JSON mode with nested {'setup': {'setup': ...}} objects, "
        "not the asked setup/punchline strings"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="SmolLM2-135M writes 'Hello Corporation' instead of copying the Japanese name "
        "into the call"
    )
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
