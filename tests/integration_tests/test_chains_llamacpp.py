"""The chains on the real engine: exact counts with SmolLM2's own tokenizer and template."""

from __future__ import annotations

import random
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langchain_multillm import ChatLlamaCpp, ContextWindowExceededError
from langchain_multillm.chains import create_rag_chain, create_summarize_chain
from tests.unit_tests.chain_fakes import ListRetriever

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(600)]

FACTS = [
    "The Eiffel Tower is 330 metres tall.",
    "It was completed in 1889 for the World's Fair.",
    "Gustave Eiffel's company designed and built it.",
    "About seven million people visit it every year.",
    "It is repainted every seven years.",
]


class Prompts(BaseCallbackHandler):
    """Records every chat prompt sent."""

    def __init__(self) -> None:
        self.sent: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], **kw: Any
    ) -> None:
        self.sent.extend(messages)


@pytest.fixture(scope="module")
def chat(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, seed=1)


def test_packing_with_exact_counts_never_overflows(chat: ChatLlamaCpp) -> None:
    rng = random.Random(3)
    window = chat.get_limits().context_window
    assert window == 2048
    for _ in range(25):
        docs = [
            Document(" ".join(rng.choices(FACTS, k=rng.randint(1, 120))), metadata={"i": i})
            for i in range(rng.randint(1, 6))
        ]
        history = [
            HumanMessage("Tell me more. " * rng.randint(0, 60)),
            AIMessage("Sure. " * rng.randint(0, 60)),
        ]
        answer = rng.randint(16, 400)
        chain = create_rag_chain(
            chat,
            ListRetriever(documents=docs),
            answer_tokens=answer,
            on_overflow=rng.choice(["cut", "drop"]),
        )
        packed = chain.pack("How tall is the Eiffel Tower?", history, docs)
        assert chat.count_tokens(packed.messages) + answer <= window
        assert packed.fit.fits
        assert len(packed.documents) + packed.dropped == len(docs)


def test_cut_fills_the_room_left(chat: ChatLlamaCpp) -> None:
    docs = [Document(" ".join(FACTS * 80), metadata={"title": "Eiffel"})]
    chain = create_rag_chain(chat, ListRetriever(documents=docs), answer_tokens=100)
    packed = chain.pack("How tall is the Eiffel Tower?", [], docs)
    assert packed.cut == 1 and packed.documents[0].page_content.endswith(".")
    used = chat.count_tokens(packed.messages) + 100
    assert 2048 - 60 <= used <= 2048  # cut at the last sentence that fits: little room wasted


def test_answer_streams_then_sources(chat: ChatLlamaCpp) -> None:
    docs = [
        Document(FACTS[0], metadata={"title": "Height", "url": "https://example.org/h"}),
        Document("Bananas are yellow.", metadata={"title": "Bananas"}),
    ]
    chain = create_rag_chain(chat, ListRetriever(documents=docs), answer_tokens=40)
    chunks = list(chain.stream({"question": "How tall is the Eiffel Tower?"}))
    answer = "".join(c.get("answer", "") for c in chunks)
    assert answer.strip()  # what it says is the tiny model's skill: not asserted
    final = chunks[-1]
    assert [s["metadata"]["title"] for s in final["sources"]] == ["Height", "Bananas"]
    assert final["fit"].fits and final["fit"].context_window == 2048
    out = chain.invoke({"question": "How tall is the Eiffel Tower?"})
    assert out["answer"].strip() == answer.strip()  # temperature 0: the same answer


def test_summarizer_every_prompt_fits_the_real_window(chat: ChatLlamaCpp) -> None:
    lines = [
        f"{name}: About item {i}, {FACTS[i % 5].lower()} We should note that for the report."
        for i, name in zip(range(90), ["Ann", "Ben", "Cy"] * 30, strict=False)
    ]
    text = "\n".join(lines)
    assert chat.count_tokens(text) > 2048  # longer than the window
    seen = Prompts()
    chain = create_summarize_chain(chat, turn_tokens=200, summary_tokens=80)
    out = chain.invoke(text, {"callbacks": [seen]})
    assert out["turns"] >= 10 and out["rounds"] >= 2 and out["summary"].strip()
    assert len(seen.sent) >= 3
    for messages in seen.sent:
        assert chat.count_tokens(messages) + 80 <= 2048


# ---- a small window: the answer budget is the model's own max_tokens ----


@pytest.fixture(scope="module")
def small(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(
        model_path=llama_cpp_available, n_ctx=512, max_tokens=48, temperature=0, seed=1
    )


def assert_answered_within(out: dict[str, Any], seen: Prompts, window: int, kept: int) -> None:
    assert isinstance(out["answer"], str)
    assert out["fit"].fits and out["fit"].max_tokens == kept
    assert out["fit"].context_window == window
    assert out["sources"]  # documents were packed, not just the question
    assert len(seen.sent) == 1


def test_rag_on_a_512_token_window_answers_with_the_models_max_tokens(
    small: ChatLlamaCpp,
) -> None:
    # Before: 512 tokens were kept for the answer whatever the model's max_tokens, so every
    # question was refused on this window.
    docs = [Document(" ".join(FACTS * 20), metadata={"title": "Eiffel"}), Document(FACTS[1])]
    seen = Prompts()
    chain = create_rag_chain(small, ListRetriever(documents=docs))
    out = chain.invoke({"question": "How tall is the Eiffel Tower?"}, {"callbacks": [seen]})
    assert_answered_within(out, seen, 512, 48)
    assert small.count_tokens(seen.sent[0]) + 48 <= 512
    assert out["cut"] + out["dropped"] >= 1  # the window, not the documents, was the limit
    with pytest.raises(ContextWindowExceededError, match="answer_tokens=512"):
        create_rag_chain(small, ListRetriever(documents=docs), answer_tokens=512).invoke("Why?")


@pytest.mark.parametrize(
    ("wrap", "kept"),
    [
        (lambda m, other: m.bind(max_tokens=32), 32),
        (lambda m, other: m.with_config(tags=["rag"]), 48),
        (lambda m, other: m.with_retry(stop_after_attempt=2), 48),
        (lambda m, other: other.with_fallbacks([m]), 64),
    ],
    ids=["bind", "with_config", "with_retry", "with_fallbacks"],
)
def test_rag_through_a_wrapped_real_model(
    small: ChatLlamaCpp, llama_cpp_available: str, wrap: Any, kept: int
) -> None:
    # The fallbacks' first model has a window of 2048 and max_tokens=64: the budget holds for
    # both models, so the tightest window (512) and the largest max_tokens (64) are kept.
    wide = ChatLlamaCpp(model_path=llama_cpp_available, max_tokens=64, temperature=0, seed=1)
    docs = [Document(" ".join(FACTS * 6), metadata={"title": "Eiffel"})]
    seen = Prompts()
    out = create_rag_chain(wrap(small, wide), ListRetriever(documents=docs)).invoke(
        {"question": "How tall is the Eiffel Tower?"}, {"callbacks": [seen]}
    )
    assert_answered_within(out, seen, 512, kept)
    assert small.count_tokens(seen.sent[0]) + kept <= 512
