"""langchain-tests' standard chat-model suites for ChatVLLM, on the real vLLM engine (CPU build).

Every model the suites build has the same engine settings, so they all share the session's one
engine (loaded once, ~20 s).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_multillm import ChatVLLM
from tests import peers

pytestmark = [pytest.mark.vllm_engine, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _engine(vllm_engine_params: dict) -> None:
    """Checks the peer (vllm importable, the model converted) and sets the engine's env."""


def _params() -> dict:
    return {**peers.vllm_engine_params(), "seed": 1}


class TestChatVLLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        return _params()

    @property
    def standard_chat_model_params(self) -> dict:
        # An in-process engine has no API key and no HTTP timeout, and this package's models
        # refuse settings they do not have, so the suite's api_key and timeout are left out.
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in ("api_key", "timeout")}


class TestChatVLLMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        # The suite sets no max_tokens; without one the tiny model talks until the window is
        # full, so cap it as PEERS.md advises.
        return {**_params(), "max_tokens": 100}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # Each xfail below is a limit of the 135M-parameter model, not of this package (the
    # call is forced and schema-valid; the model fills it wrongly). strict=False: sampling
    # sometimes gets lucky.
    WRONG_ARGS = "SmolLM2-135M fills the forced, schema-valid call with a wrong argument"

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason=WRONG_ARGS)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=WRONG_ARGS)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(
        reason="json_mode constrains to any JSON object; SmolLM2-135M nests the fields"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="unforced tool calls: SmolLM2's chat template renders no tools, so the model "
        "never calls one unless forced (and it writes no well-formed calls a tool_call_parser "
        "could read)"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="SmolLM2-135M does not copy the Chinese text into the call")
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
