"""Sampling fields declared once (the mixins of ``_base``), sent once (``_default_params`` in
the base), accepted per call where set on the instance, and one list of the keys never sent
(``LOCAL_CALL_PARAMS``, ``_local_call_params``, ``wire_params``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import ClassVar

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_multillm import (
    TGI,
    ChatAzureOpenAI,
    ChatDeepSeek,
    ChatGemini,
    ChatLlamaCpp,
    ChatTGI,
    ChatVLLMServer,
    InvalidInputError,
    LlamaCpp,
    VLLMServer,
)
from langchain_multillm._base import (
    COMMON_CALL_PARAMS,
    LOCAL_CALL_PARAMS,
    SAMPLING_FIELDS,
    SAMPLING_MIXINS,
    ChatRequest,
    ExtraBody,
    MultiLLMChatModel,
    Penalties,
    Seed,
    TopK,
    wire_params,
)
from langchain_multillm.health import HealthReport


class Echo(Penalties, Seed, TopK, ExtraBody, MultiLLMChatModel):
    """A backend that lists mixins and one field of its own; it answers with its params."""

    model_name: str = "echo"
    context_overflow: str = "ignore"  # type: ignore[assignment]
    flavour: str | None = None
    _param_fields: ClassVar[tuple[str, ...]] = ("flavour",)
    _local_call_params: ClassVar[frozenset[str]] = frozenset({"model"})
    seen: ClassVar[list[dict[str, object]]] = []

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _health(self) -> HealthReport:
        return HealthReport(alive=True, ready=True, latency_s=0.0)

    def _chat(self, req: ChatRequest) -> ChatResult:
        Echo.seen.append(self._wire_params(req.params))
        msg = AIMessage("ok", response_metadata={"finish_reason": "stop"})
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk("ok"))

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk("ok"))


def test_a_mixin_gives_the_field_its_default_param_and_the_call_key() -> None:
    llm = Echo(seed=3, presence_penalty=0.5, flavour="x", temperature=0.1, extra_body={"e": 1})
    assert llm._default_params() == {
        "temperature": 0.1,
        "seed": 3,
        "presence_penalty": 0.5,
        "flavour": "x",
        "e": 1,
    }
    allowed = llm._allowed_call_params()
    assert {"seed", "presence_penalty", "frequency_penalty", "top_k", "flavour"} <= allowed
    assert "extra_body" in allowed and allowed >= COMMON_CALL_PARAMS
    assert "min_p" not in allowed  # no MinP mixin: refused by name
    with pytest.raises(InvalidInputError, match="min_p"):
        llm.invoke("hi", min_p=0.1)


def test_the_call_wins_and_local_keys_are_never_sent() -> None:
    Echo.seen.clear()
    llm = Echo(seed=3, top_k=2)
    llm.invoke("hi", seed=9, model="other", ls_trace_tag="t")
    (sent,) = Echo.seen
    assert sent["seed"] == 9 and sent["top_k"] == 2
    assert "model" not in sent and not any(k.startswith("ls_") for k in sent)


def test_a_mixins_bounds_hold_on_the_instance() -> None:
    with pytest.raises(ValueError, match="presence_penalty"):
        Echo(presence_penalty=3)


def test_extra_body_is_checked_once_before_anything_is_sent() -> None:
    with pytest.raises(InvalidInputError, match="extra_body: must be a dict"):
        Echo().invoke("hi", extra_body=["no"])


def test_wire_params_leaves_out_the_local_keys() -> None:
    params = {"temperature": 0.1, "ls_anything": 1, "stream": False, "context_overflow": "raise"}
    assert LOCAL_CALL_PARAMS <= COMMON_CALL_PARAMS
    assert wire_params(params) == {"temperature": 0.1}
    assert wire_params({"a": 1, "b": 2}, also=("b",)) == {"a": 1}


# Where each backend's sampling fields come from: the mixins, each declared once.
EXPECTED = {
    ChatTGI: {"seed", "presence_penalty", "frequency_penalty"},
    TGI: {"seed", "top_k", "repetition_penalty", "typical_p"},
    ChatVLLMServer: {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "min_p",
    },
    VLLMServer: {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "min_p",
    },
    ChatDeepSeek: {"presence_penalty", "frequency_penalty"},
    ChatAzureOpenAI: {"seed", "presence_penalty", "frequency_penalty"},
    ChatGemini: {"seed", "top_k"},
    ChatLlamaCpp: {"seed", "repetition_penalty", "top_k", "min_p"},
    LlamaCpp: {"seed", "repetition_penalty", "top_k", "min_p"},
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_backends_take_their_sampling_fields_from_the_mixins(cls: type) -> None:
    fields = {f for f in SAMPLING_FIELDS if f in cls.model_fields}  # type: ignore[attr-defined]
    assert fields == EXPECTED[cls]
    assert "_default_params" not in vars(cls)  # written once, in the base
    for mixin in SAMPLING_MIXINS:
        if set(mixin.model_fields) <= fields:
            assert issubclass(cls, mixin), (cls.__name__, mixin.__name__)
