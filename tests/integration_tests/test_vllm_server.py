"""ChatVLLMServer and VLLMServer against the real vLLM CPU server (SmolLM2, window 2048),
and against llama_cpp.server as a second OpenAI-protocol peer."""

from __future__ import annotations

import asyncio
import random
import string

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_multillm import (
    ChatVLLMServer,
    ContextWindowExceededError,
    IncompleteResponseError,
    ModelNotFoundError,
    VLLMServer,
)
from langchain_multillm.errors import MultiLLMWarning
from tests.integration_tests.parity import assert_four_ways_agree, merge

Q = [SystemMessage("Answer in one short sentence."), HumanMessage("What is the capital of France?")]


@pytest.mark.vllm_server
@pytest.mark.timeout(300)
class TestRealVLLMServer:
    @pytest.fixture
    def chat(self, vllm_server_url: str) -> ChatVLLMServer:
        return ChatVLLMServer(
            base_url=vllm_server_url, model="smollm2", temperature=0, max_tokens=24, seed=1
        )

    def test_discovery_and_health(self, chat: ChatVLLMServer) -> None:
        h = chat.health()
        assert (
            h.alive and h.ready and h.context_window == 2048 and h.latency_s < chat.health_timeout
        )
        assert chat.get_limits().context_window == 2048
        assert chat.context_window == 2048
        assert chat.profile is not None and chat.profile["max_input_tokens"] == 2048

    def test_health_model_not_served(self, vllm_server_url: str) -> None:
        h = ChatVLLMServer(base_url=vllm_server_url, model="nope").health()
        assert h.alive and not h.ready and "smollm2" in h.detail

    def test_unknown_model_is_model_not_found(self, vllm_server_url: str) -> None:
        with pytest.raises(ModelNotFoundError):
            ChatVLLMServer(base_url=vllm_server_url, model="nope", context_window=2048).invoke("hi")

    def test_invoke_stream_ainvoke_astream_agree(self, chat: ChatVLLMServer) -> None:
        inv = assert_four_ways_agree(chat, Q)
        assert inv.response_metadata["model_name"] == "smollm2"

    def test_exact_count_equals_server_usage(self, chat: ChatVLLMServer) -> None:
        out = chat.invoke(Q)
        assert out.usage_metadata is not None
        assert chat.count_tokens(Q) == out.usage_metadata["input_tokens"]
        assert chat.get_num_tokens_from_messages(Q) == out.usage_metadata["input_tokens"]

    def test_bound_never_under_counts(self, chat: ChatVLLMServer) -> None:
        chat.get_limits()
        rng = random.Random(7)
        alphabet = string.ascii_letters + string.digits + " \n.,!?éüß中文😀<>|{}"
        for _ in range(25):
            msgs = [
                SystemMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))),
                HumanMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))),
                AIMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))),
                HumanMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))),
            ][: rng.randint(1, 4)]
            if isinstance(msgs[0], AIMessage):
                continue
            from langchain_multillm._base import Prompt

            bound = chat._count_bound(Prompt(messages=msgs))
            exact = chat.count_tokens(msgs)
            assert bound is not None and bound >= exact, (msgs, bound, exact)

    def test_overflow_raises_before_sending(self, chat: ChatVLLMServer) -> None:
        long = [HumanMessage("hello " * 2100)]
        with pytest.raises(ContextWindowExceededError) as info:
            chat.invoke(long)
        assert info.value.limit == 2048 and info.value.fit is not None and info.value.fit.exact
        assert not chat.is_valid_prompt(long)

    def test_prompt_plus_max_tokens_over_window(self, chat: ChatVLLMServer) -> None:
        msgs = [HumanMessage("hello " * 2000)]
        n = chat.count_tokens(msgs)
        assert n < 2048
        with pytest.raises(ContextWindowExceededError):
            chat.invoke(msgs, max_tokens=100)
        clamped = chat.invoke(msgs, max_tokens=100, context_overflow="clamp")
        assert clamped.usage_metadata is not None
        assert clamped.usage_metadata["output_tokens"] <= 2048 - n

    def test_server_refusal_maps_when_unchecked(self, chat: ChatVLLMServer) -> None:
        with pytest.raises(ContextWindowExceededError, match="maximum context length"):
            chat.invoke([HumanMessage("hello " * 2100)], context_overflow="ignore")

    def test_structured_output_json_schema(self, chat: ChatVLLMServer) -> None:
        schema = {
            "title": "City",
            "type": "object",
            "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
            "required": ["name", "country"],
        }
        out = chat.with_structured_output(schema).invoke("Name a city in Italy.", max_tokens=60)
        assert isinstance(out, dict) and set(out) >= {"name", "country"}

    def test_json_mode(self, chat: ChatVLLMServer) -> None:
        # The server constrains the answer to JSON; whether SmolLM2 closes its object within 40
        # tokens is its own skill: a whole object comes back as a dict, a cut one as the typed
        # error that names max_tokens (never a half-parsed object).
        structured = chat.with_structured_output(method="json_mode", include_raw=True)
        out = structured.invoke("Give a JSON object with a key a.", max_tokens=40)
        if out["parsing_error"] is None:
            assert isinstance(out["parsed"], dict)
        else:
            assert isinstance(out["parsing_error"], IncompleteResponseError)
            assert "max_tokens" in str(out["parsing_error"])

    def test_completion_model(self, vllm_server_url: str) -> None:
        llm = VLLMServer(base_url=vllm_server_url, model="smollm2", temperature=0, max_tokens=12)
        text = llm.invoke("The capital of France is")
        assert text and text == "".join(llm.stream("The capital of France is"))
        assert llm.count_tokens("The capital of France is") == 5
        with pytest.raises(ContextWindowExceededError):
            llm.invoke("hello " * 2100)
        assert asyncio.run(llm.ainvoke("The capital of France is")) == text


@pytest.mark.llamacpp
@pytest.mark.timeout(120)
class TestLlamaCppServerPeer:
    """llama_cpp.server speaks the OpenAI protocol but has no /health, /tokenize or stream usage."""

    def test_chat_without_vllm_routes(self, llama_server_url: str) -> None:
        chat = ChatVLLMServer(
            base_url=llama_server_url, model="smollm2", temperature=0, max_tokens=16
        )
        h = chat.health()
        assert h.alive and h.ready and h.context_window is None
        with pytest.warns(MultiLLMWarning, match="context window is unknown"):
            out = chat.invoke(Q)
        assert out.content and out.usage_metadata is not None
        st = merge(list(chat.stream(Q)))
        assert st.content == out.content
        assert st.usage_metadata is None  # the server sends none and cannot count: never a guess
        assert st.response_metadata["finish_reason"] == out.response_metadata["finish_reason"]

    def test_configured_window_and_bound(self, llama_server_url: str) -> None:
        chat = ChatVLLMServer(
            base_url=llama_server_url, model="smollm2", context_window=2048, max_tokens=16
        )
        r = chat.check_fit(Q)
        assert r.fits and not r.exact and r.prompt_tokens >= 30
        with pytest.raises(ContextWindowExceededError):
            chat.invoke([HumanMessage("hello " * 2100)])

    def test_server_refusal_maps(self, llama_server_url: str) -> None:
        chat = ChatVLLMServer(
            base_url=llama_server_url, model="smollm2", context_window=2048, max_tokens=16
        )
        with pytest.raises(ContextWindowExceededError):
            chat.invoke([HumanMessage("hello " * 2100)], context_overflow="ignore")
