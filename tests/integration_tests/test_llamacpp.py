"""ChatLlamaCpp and LlamaCpp on the real engine: the bundled SmolLM2-135M GGUF, in-process."""

from __future__ import annotations

import asyncio
import threading

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel

from langchain_multillm import ChatLlamaCpp, ContextWindowExceededError, InvalidInputError, LlamaCpp
from tests.integration_tests.parity import assert_four_ways_agree, merge

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]

Q = [SystemMessage("Answer in one short sentence."), HumanMessage("What is the capital of France?")]


@pytest.fixture(scope="module")
def chat(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=24, seed=1)


def test_invoke_stream_ainvoke_astream_agree(chat: ChatLlamaCpp) -> None:
    assert_four_ways_agree(chat, Q)


def test_count_is_exact_and_matches_the_prompt_the_engine_saw(chat: ChatLlamaCpp) -> None:
    out = chat.invoke(Q)
    assert out.usage_metadata is not None
    assert chat.count_tokens(Q) == out.usage_metadata["input_tokens"]
    assert chat.get_num_tokens_from_messages(Q) == out.usage_metadata["input_tokens"]
    assert chat.context_window == 2048


def test_near_the_limit_the_check_counts_exactly(chat: ChatLlamaCpp) -> None:
    n = chat.count_tokens(Q)
    report = chat.check_fit(Q, max_tokens=2048 - n)  # the bound says no; the exact count fits
    assert report.exact and report.fits and report.prompt_tokens == n and report.room == 2048 - n


def test_overflow_raises_before_generation(llama_cpp_available: str) -> None:
    small = ChatLlamaCpp(model_path=llama_cpp_available, n_ctx=128, max_tokens=16)
    long = [HumanMessage("word " * 200)]
    with pytest.raises(ContextWindowExceededError) as info:
        small.invoke(long)
    assert info.value.limit == 128 and info.value.prompt_tokens > 128
    assert not small.is_valid_prompt(long)


def test_clamp_lowers_max_tokens(llama_cpp_available: str) -> None:
    small = ChatLlamaCpp(
        model_path=llama_cpp_available, n_ctx=128, temperature=0, context_overflow="clamp"
    )
    msgs = [HumanMessage("word " * 40)]
    report = small.check_fit(msgs, max_tokens=500)
    assert not report.fits
    out = small.invoke(msgs, max_tokens=500)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] + out.usage_metadata["output_tokens"] <= 128


def test_one_engine_shared_by_instances(llama_cpp_available: str, chat: ChatLlamaCpp) -> None:
    other = ChatLlamaCpp(model_path=llama_cpp_available, temperature=0.7)
    assert other.engine is chat.engine
    completion = LlamaCpp(model_path=llama_cpp_available)
    assert completion.engine is chat.engine


def test_threads_share_the_model_safely(chat: ChatLlamaCpp) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(str(chat.invoke(Q).content))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1  # temperature 0: the same answer


def test_health_is_free_and_ready(chat: ChatLlamaCpp) -> None:
    chat.invoke("hi", max_tokens=1)
    h = chat.health()
    assert h.alive and h.ready and h.context_window == 2048
    assert asyncio.run(chat.ais_alive())


def test_health_never_loads_a_model(llama_cpp_available: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cold = ChatLlamaCpp(model_path=llama_cpp_available, n_ctx=1024)
    h = cold.health()
    assert h.alive and not h.ready and "not loaded" in h.detail
    assert cold._held_engine() is None
    # Construction refuses a file that is not GGUF; health reads what the file is now.
    changed = tmp_path / "x.gguf"
    changed.write_bytes(b"GGUF")
    model = ChatLlamaCpp(model_path=str(changed))
    changed.write_bytes(b"nope")
    h = model.health()
    assert not h.alive and "not a GGUF" in h.detail
    changed.unlink()
    assert not model.health().alive


def test_unknown_sampling_key_is_refused_by_name(chat: ChatLlamaCpp) -> None:
    with pytest.raises(InvalidInputError, match="typical_q"):
        chat.invoke(Q, typical_q=0.5)


def test_structured_output_is_schema_constrained(chat: ChatLlamaCpp) -> None:
    class City(BaseModel):
        name: str
        country: str

    out = chat.with_structured_output(City).invoke("Name a city in Italy.", max_tokens=60)
    assert isinstance(out, City)


def test_forced_tool_call(chat: ChatLlamaCpp) -> None:
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return "sunny"

    msg = chat.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "Weather in Paris?", max_tokens=60
    )
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert "city" in msg.tool_calls[0]["args"]


def test_completion_model(llama_cpp_available: str) -> None:
    llm = LlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=12)
    text = llm.invoke("The capital of France is")
    streamed = "".join(llm.stream("The capital of France is"))
    assert text and text == streamed
    result = llm.generate(["Once upon a time"])
    info = result.generations[0][0].generation_info or {}
    assert info["finish_reason"] in ("stop", "length") and info["usage"][
        "prompt_tokens"
    ] == llm.count_tokens("Once upon a time")


def test_bound_never_under_counts_and_decides_far_from_the_limit(chat: ChatLlamaCpp) -> None:
    import random
    import string

    from langchain_core.messages import AIMessage

    from langchain_multillm._base import Prompt

    chat.get_limits()
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + " \n.,!?éüß中文😀<>|{}"

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    for _ in range(200):
        msgs = [
            SystemMessage(text(80)),
            HumanMessage(text(200)),
            AIMessage(text(80)),
            HumanMessage(text(120)),
        ]
        msgs = msgs[rng.choice([0, 1]) : rng.randint(2, 4)]
        bound = chat._count_bound(Prompt(messages=msgs))
        exact = chat.count_tokens(msgs)
        assert bound is not None
        assert bound >= exact, (msgs, bound, exact)
    far = chat.check_fit(Q, max_tokens=24)
    assert far.fits and not far.exact  # decided by the bound, no tokenization


def test_trim_messages_uses_the_exact_counter(chat: ChatLlamaCpp) -> None:
    from langchain_core.messages import AIMessage, trim_messages

    history = [SystemMessage("Be brief.")]
    for i in range(30):
        history += [
            HumanMessage(f"Question number {i} about the sea?"),
            AIMessage(f"Answer {i}: it is wet."),
        ]
    trimmed = trim_messages(
        history, max_tokens=200, token_counter=chat, strategy="last", include_system=True
    )
    assert 1 < len(trimmed) < len(history)
    assert chat.get_num_tokens_from_messages(trimmed) <= 200
    assert chat.count_tokens(trimmed) <= 200


def test_required_over_several_tools_is_forced(chat: ChatLlamaCpp) -> None:
    def magic_function(input: int) -> int:
        """Applies a magic function to an input."""
        return input + 2

    def get_weather(location: str) -> str:
        """Get the weather at a location."""
        return "sunny"

    bound = chat.bind_tools([magic_function, get_weather], tool_choice="any")
    msg = bound.invoke("What is the weather in Paris?", max_tokens=60)
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] in ("magic_function", "get_weather")
    assert set(call["args"]) == ({"input"} if call["name"] == "magic_function" else {"location"})
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    streamed = merge(list(bound.stream("What is the weather in Paris?", max_tokens=60)))
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(call["name"], call["args"])]
    assert streamed.usage_metadata == msg.usage_metadata


def test_a_huge_prompt_is_refused_on_the_lower_bound_without_tokenizing(
    chat: ChatLlamaCpp, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat.invoke("hi")  # loaded
    eng = chat.engine
    assert eng.max_token_bytes() >= len("<|im_start|>")  # special tokens' text is in the vocabulary
    calls: list[int] = []
    tokenize = eng.llama.tokenize
    monkeypatch.setattr(eng.llama, "tokenize", lambda *a, **k: calls.append(1) or tokenize(*a, **k))
    big = "hello world " * 900_000  # 10.8 MB
    with pytest.raises(ContextWindowExceededError) as info:
        chat.invoke(big)
    assert info.value.fit is not None and info.value.fit.counted == "lower_bound"
    assert calls == []  # neither counted nor generated


def test_limits_and_profile_are_known_before_the_model_loads(llama_cpp_available: str) -> None:
    llm = ChatLlamaCpp(model_path=llama_cpp_available, n_ctx=1024, n_threads=1)  # a new engine key
    assert llm.context_window == 1024 and llm.profile == {"max_input_tokens": 1024}
    assert llm._held_engine() is None  # nothing was loaded to know it
    assert llm.get_limits().context_window == 1024
