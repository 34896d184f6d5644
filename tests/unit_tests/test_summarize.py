"""create_summarize_chain with a chat model of another package (the conservative estimate)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.messages import convert_to_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_multillm import InvalidInputError
from langchain_multillm.backends.vllm_server import ChatVLLMServer
from langchain_multillm.chains import create_summarize_chain
from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains._text import merge, pieces_within, split_sentences, split_speakers
from tests.unit_tests.chain_fakes import EchoChat
from tests.unit_tests.fake_server import FakeServer, completion

SPEAKERS = ["Alice", "Bob", "Carol"]


def transcript(lines: int) -> str:
    return "\n".join(
        f"{SPEAKERS[i % 3]}: Point {i} is about topic {i % 7}. We agreed on item {i * 3}."
        for i in range(lines)
    )


def assert_every_prompt_fits(llm: EchoChat, window: int, summary_tokens: int) -> None:
    budget = Budget(llm, window)
    assert llm.calls
    for messages in llm.calls:
        assert budget.count(messages) + summary_tokens <= window


def test_text_splitting_helpers() -> None:
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_speakers("A: hi\nB: hello there\nA: bye") == ["A: hi", "B: hello there", "A: bye"]
    assert split_speakers("Just prose. No speakers at all.") is None
    pieces = pieces_within("Short. " + "word " * 50 + "x" * 95, 40, len)
    assert pieces[0] == "Short." and all(len(p) <= 40 for p in pieces)
    assert "".join(pieces).replace(" ", "") == ("Short." + "word" * 50 + "x" * 95)
    assert merge([("a", 3), ("b", 3), ("c", 5)], 6, "+") == ["a+b", "c"]


def test_turns_follow_speakers_and_stay_near_turn_tokens() -> None:
    chain = create_summarize_chain(EchoChat(), turn_tokens=200, context_window=4000)
    turns = chain.split(transcript(40))
    assert len(turns) > 5
    assert all(t.split(":")[0] in SPEAKERS for t in turns)  # each starts at a speaker line
    budget = chain.budget
    assert all(budget.text(t) <= 200 + 2 * len(t.splitlines()) for t in turns)


def test_prose_is_split_at_sentences_and_a_huge_sentence_between_words() -> None:
    chain = create_summarize_chain(EchoChat(), turn_tokens=50, context_window=4000)
    turns = chain.split("word " * 400 + ". A short one.")
    assert len(turns) > 8 and "".join(turns).replace(" ", "").count("word") == 400


@pytest.mark.parametrize("mode", ["map_reduce", "refine"])
def test_long_text_reduces_to_one_summary_and_every_prompt_fits(mode: str) -> None:
    llm = EchoChat(words=30)
    chain = create_summarize_chain(
        llm,
        turn_tokens=150,
        mode=mode,
        summary_tokens=100,
        context_window=1200,  # type: ignore[arg-type]
    )
    out = chain.invoke(transcript(80))
    assert out["turns"] > 10 and out["rounds"] >= 2
    assert out["summary"] and len(out["summary"].split()) <= 30
    assert_every_prompt_fits(llm, 1200, 100)
    if mode == "refine":
        assert out["rounds"] == len(llm.calls)
        assert "Summary of the text so far" in llm.calls[-1][-1].text


def test_short_text_is_one_call() -> None:
    llm = EchoChat(reply="A short summary.")
    out = create_summarize_chain(llm, context_window=4000).invoke({"text": "Alice met Bob."})
    assert out == {"summary": "A short summary.", "turns": 1, "rounds": 1}
    assert len(llm.calls) == 1


def test_map_then_reduce_rounds() -> None:
    llm = EchoChat(words=5)
    chain = create_summarize_chain(llm, turn_tokens=150, summary_tokens=60, context_window=900)
    out = chain.invoke(transcript(60))
    assert out["rounds"] >= 2
    is_reduce = ["partial summaries" in c[0].text for c in llm.calls]
    first_reduce = is_reduce.index(True)
    assert first_reduce > 1 and all(is_reduce[first_reduce:])  # every map before any reduce


def test_unknown_window_still_summarizes_in_groups() -> None:
    llm = EchoChat(words=5)
    out = create_summarize_chain(llm, turn_tokens=100).invoke(transcript(120))
    assert out["rounds"] >= 2 and len(llm.calls) > 2


@pytest.mark.parametrize(
    ("kind", "word"), [("extractive", "word for word"), ("markdown", "Markdown")]
)
def test_kinds_change_the_instructions(kind: str, word: str) -> None:
    llm = EchoChat()
    create_summarize_chain(llm, kind=kind, context_window=4000).invoke("Some text.")  # type: ignore[arg-type]
    assert word in llm.calls[0][0].text


def test_reduce_prompt_is_used() -> None:
    llm = EchoChat(words=10)
    reduce = ChatPromptTemplate.from_messages([("human", "MERGE THESE:\n{text}")])
    chain = create_summarize_chain(
        llm, turn_tokens=150, summary_tokens=60, reduce_prompt=reduce, context_window=900
    )
    chain.invoke(transcript(60))
    assert any(c[0].text.startswith("MERGE THESE:") for c in llm.calls)


def test_max_turns_refuses_before_any_call() -> None:
    llm = EchoChat()
    chain = create_summarize_chain(llm, turn_tokens=100, max_turns=3, context_window=4000)
    with pytest.raises(InvalidInputError, match="max_turns is 3") as info:
        chain.invoke(transcript(60))
    assert info.value.field == "max_turns" and llm.calls == []


def test_window_too_small_for_a_turn_is_refused_before_any_call() -> None:
    llm = EchoChat()
    chain = create_summarize_chain(llm, turn_tokens=400, summary_tokens=300, context_window=700)
    with pytest.raises(InvalidInputError, match="turn_tokens"):
        chain.invoke(transcript(60))
    assert llm.calls == []


@pytest.mark.parametrize("text", ["", "   ", None, 5])
def test_empty_text_is_a_value_error(text: object) -> None:
    with pytest.raises(ValueError, match="text"):
        create_summarize_chain(EchoChat()).invoke(text)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"turn_tokens": 0}, "turn_tokens"),
        ({"summary_tokens": -1}, "summary_tokens"),
        ({"max_turns": 0}, "max_turns"),
        ({"mode": "stuff"}, "mode"),
        ({"kind": "poem"}, "kind"),
        ({"reduce_prompt": ChatPromptTemplate.from_messages([("human", "{x}")])}, "reduce_prompt"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        create_summarize_chain(EchoChat(), **kwargs)
    assert info.value.field == field


async def test_ainvoke_matches_invoke() -> None:
    chain = create_summarize_chain(EchoChat(words=8), turn_tokens=150, context_window=1200)
    text = transcript(50)
    assert await chain.ainvoke(text) == chain.invoke(text)


# ---- wrapped models: counted through the models inside, called through the wrapper ----


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: m.bind(stop=["\n\n"]),
        lambda m: m.with_config(tags=["t"]),
        lambda m: m.with_retry(retry_if_exception_type=(ConnectionError,), stop_after_attempt=2),
        lambda m: EchoChat(failures=10**6).with_fallbacks([m]),
    ],
    ids=["bind", "with_config", "with_retry", "with_fallbacks"],
)
def test_a_wrapped_model_is_accepted_and_called_through_the_wrapper(wrap: Any) -> None:
    llm = EchoChat(words=8)
    chain = create_summarize_chain(wrap(llm), turn_tokens=150, context_window=1200)
    out = chain.invoke(transcript(50))
    assert out["summary"] and out["rounds"] >= 2
    assert_every_prompt_fits(llm, 1200, 256)


def test_with_retry_retries_a_failed_group() -> None:
    llm = EchoChat(reply="summary", failures=1)
    chain = create_summarize_chain(llm.with_retry(stop_after_attempt=2), context_window=4000)
    assert chain.invoke("Alice met Bob.")["summary"] == "summary" and llm.attempts == 2


def test_with_fallbacks_every_prompt_fits_the_tightest_window() -> None:
    wide, narrow = FakeServer(window=8000), FakeServer(window=900)
    wide.chat = [httpx.Response(500, json={"error": {"message": "boom"}})]
    narrow.chat = [httpx.Response(200, json=completion("partial summary"))]
    fallback = ChatVLLMServer(model="m", **narrow.clients())
    primary = ChatVLLMServer(model="m", max_retries=0, **wide.clients())
    chain = create_summarize_chain(
        primary.with_fallbacks([fallback]), turn_tokens=150, summary_tokens=100
    )
    out = chain.invoke(transcript(80))
    assert out["summary"] == "partial summary" and out["rounds"] >= 2
    assert narrow.bodies and all(b["max_tokens"] == 100 for b in narrow.bodies)
    for body in narrow.bodies:
        assert fallback.count_tokens(convert_to_messages(body["messages"])) + 100 <= 900
    # the primary alone packs more text per prompt
    alone = create_summarize_chain(primary, turn_tokens=150, summary_tokens=100)
    assert alone._capacity(alone.map_prompt) > chain._capacity(chain.map_prompt)


def test_not_a_chat_model_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError) as info:
        create_summarize_chain(EchoChat() | StrOutputParser())
    assert info.value.field == "llm" and "RunnableSequence" in info.value.problem
