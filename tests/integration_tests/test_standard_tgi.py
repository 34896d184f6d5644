"""langchain-tests' ChatModelIntegrationTests for ChatTGI against the TGI protocol fixture
(tests/fixtures/tgi_server.py: spec-validated, generating with the bundled SmolLM2)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_multillm import ChatTGI
from tests.integration_tests.tiny_model import (
    ARGUMENT_VALUE,
    NON_EMPTY_ARGUMENT,
    UNFORCED_CALL,
    UNICODE_COPY,
    ShortPlainAnswers,
    skill,
)

pytestmark = [pytest.mark.tgi, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(tgi_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGI_BASE_URL", tgi_server_url)


class TestChatTGIIntegration(ShortPlainAnswers, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatTGI]:
        return ChatTGI

    @property
    def chat_model_params(self) -> dict:
        # The suite sets no max_tokens; the tiny model would otherwise fill the window.
        return {"seed": 1, "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False  # TGI's JSON grammar needs a schema; there is no free-form JSON mode

    # The fixture constrains a forced call to the tool's schema (as TGI's grammar does) and
    # bounds it to close within max_tokens; what a test asserts beyond that is the model's.
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

    @skill(UNICODE_COPY)
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
