"""What only the tiny model's skill decides in langchain-tests' standard suites.

The bundled SmolLM2-135M's words differ with the CPU's floating-point path, the thread count
and the seed. The engines and fixtures guarantee the shape of an answer (a forced call is a
call of that tool, constrained JSON closes within max_tokens: tests/fixtures/core/grammar.py);
what a standard test asserts beyond the shape is the model's, so those tests are non-strict
xfails that name the skill: they may pass (XPASS) on one machine and fail on another, and
neither outcome fails the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from langchain_core.language_models import BaseChatModel

ARGUMENT_VALUE = (
    "the tiny model's skill: which value it writes into the forced call (the test wants input=3)"
)
NON_EMPTY_ARGUMENT = (
    "the tiny model's skill: whether it writes a non-empty answer_style into the forced call "
    "(an empty string is schema-valid)"
)
UNFORCED_CALL = "the tiny model's skill: whether it calls get_weather when the call is not forced"
JSON_MODE_KEYS = (
    "the tiny model's skill: json_mode constrains the answer to a JSON object; whether its "
    "keys are setup and punchline is the model's"
)
UNICODE_COPY = "the tiny model's skill: copying the Chinese and Japanese names into the call"
LLAMACPP_CLOSES_JSON = (
    "the tiny model's skill: llama-cpp-python constrains the answer to the schema, whose strings "
    "are free; whether SmolLM2 ends them and closes the object within max_tokens is the model's "
    "(a cut answer raises IncompleteResponseError naming max_tokens)"
)
CLOSES_JSON = (
    "the tiny model's skill: vLLM constrains the answer to the schema, whose strings are free; "
    "whether SmolLM2 ends them and closes the object within max_tokens is the model's (a cut "
    "answer raises IncompleteResponseError naming max_tokens)"
)


def skill(reason: str) -> pytest.MarkDecorator:
    """A non-strict xfail for what only the model's skill decides."""
    return pytest.mark.xfail(strict=False, reason=reason)


# Tests of the suite that read no more of an answer than that it is there (no tools bound, no
# JSON): a short budget is enough, and saves minutes where a CPU makes ~1 token/s a stream
# (PEERS.md: the vLLM tiers on a slow CPU).
PLAIN_ANSWER_TESTS = frozenset(
    {
        "test_invoke",
        "test_ainvoke",
        "test_stream",
        "test_astream",
        "test_stream_events_v3",
        "test_astream_events_v3",
        "test_invoke_with_model_override",
        "test_ainvoke_with_model_override",
        "test_stream_with_model_override",
        "test_astream_with_model_override",
        "test_batch",
        "test_abatch",
        "test_conversation",
        "test_double_messages_conversation",
        "test_usage_metadata",
        "test_usage_metadata_streaming",
        "test_message_with_name",
    }
)
PLAIN_ANSWER_TOKENS = 16


class ShortPlainAnswers:
    """Mixin for a standard suite: its ``model`` fixture (langchain-tests') with at most
    PLAIN_ANSWER_TOKENS for the tests in PLAIN_ANSWER_TESTS, and at most ``short_budgets[name]``
    for the tests a suite names there."""

    standard_chat_model_params: dict[str, Any]
    chat_model_params: dict[str, Any]
    chat_model_class: type[BaseChatModel]
    short_budgets: ClassVar[Mapping[str, int]] = {}

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest) -> BaseChatModel:
        extra = getattr(request, "param", None) or {}
        params = {**self.standard_chat_model_params, **self.chat_model_params, **extra}
        name = request.node.originalname
        budget = self.short_budgets.get(name)
        if budget is None and name in PLAIN_ANSWER_TESTS:
            budget = PLAIN_ANSWER_TOKENS
        if budget is not None:
            params["max_tokens"] = min(params.get("max_tokens") or budget, budget)
        return self.chat_model_class(**params)
