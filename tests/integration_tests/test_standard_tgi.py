"""langchain-tests' ChatModelIntegrationTests for ChatTGI against the TGI protocol fixture
(tests/fixtures/tgi_server.py: spec-validated, generating with the bundled SmolLM2)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_multillm import ChatTGI

pytestmark = [pytest.mark.tgi, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _server(tgi_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGI_BASE_URL", tgi_server_url)


class TestChatTGIIntegration(ChatModelIntegrationTests):
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

    # The fixture constrains a forced call to the tool's schema (as TGI's grammar does), but
    # SmolLM2-135M fills it with wrong values: limits of the tiny model, not of ChatTGI.
    WRONG_ARGS = "SmolLM2-135M fills the forced, schema-valid call with wrong argument values"

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason=WRONG_ARGS)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=WRONG_ARGS)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not copy the Japanese text into the call")
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
