"""create_rag_chain with a chat model of another package (the conservative estimate)."""

from __future__ import annotations

import random

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from langchain_multillm import ContextWindowExceededError, InvalidInputError
from langchain_multillm.chains import create_rag_chain
from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains.rag import NO_DOCUMENTS
from tests.unit_tests.chain_fakes import EchoChat, ListRetriever

SENTENCES = [f"Fact number {i} is that the value of item {i} is {i * 7}." for i in range(400)]


def doc(n_sentences: int, start: int = 0, **metadata: object) -> Document:
    return Document(" ".join(SENTENCES[start : start + n_sentences]), metadata=metadata)


def sent_prompt(llm: EchoChat) -> str:
    (messages,) = llm.calls
    return "\n".join(m.text for m in messages)


def test_everything_fits_sources_numbered_and_metadata_passed_through() -> None:
    odd = object()  # not JSON-serializable: passed through as given
    docs = [doc(2, 0, title="A", url="u1", score=0.9), Document("   "), doc(2, 10, blob=odd)]
    llm = EchoChat(reply="It is 7 [1].")
    out = create_rag_chain(llm, ListRetriever(documents=docs)).invoke({"question": "What is 1?"})
    assert out["answer"] == "It is 7 [1]."
    assert [s["id"] for s in out["sources"]] == [1, 2]  # the empty document is skipped
    assert out["sources"][0]["metadata"] == {"title": "A", "url": "u1", "score": 0.9}
    assert out["sources"][1]["metadata"]["blob"] is odd
    assert (out["dropped"], out["cut"], out["history_dropped"]) == (0, 0, 0)
    assert out["fit"].fits and out["fit"].exact is False  # another package's model: estimated
    prompt = sent_prompt(llm)
    assert "[1] A\n" + SENTENCES[0] in prompt and "[2]\n" + SENTENCES[10] in prompt
    assert "I don't know" in prompt and "What is 1?" in prompt


def test_packing_cuts_at_a_sentence_boundary_and_never_overflows() -> None:
    docs = [doc(3, 0), doc(60, 100), doc(40, 200)]
    llm = EchoChat()
    chain = create_rag_chain(
        llm, ListRetriever(documents=docs), context_window=2000, answer_tokens=200
    )
    out = chain.invoke({"question": "What is item 101?"})
    assert out["fit"].fits and out["fit"].prompt_tokens + 200 <= 2000
    assert out["cut"] == 1 and out["dropped"] == 1
    cut = out["sources"][1]["content"]
    assert docs[1].page_content.startswith(cut) and len(cut) < len(docs[1].page_content)
    assert cut.endswith(".")  # a sentence boundary
    assert Budget(llm, 2000).count(llm.calls[0]) + 200 <= 2000


def test_drop_mode_skips_what_does_not_fit_and_takes_a_later_smaller_document() -> None:
    docs = [doc(3, 0), doc(60, 100), doc(2, 300)]
    chain = create_rag_chain(
        EchoChat(),
        ListRetriever(documents=docs),
        context_window=1500,
        answer_tokens=200,
        on_overflow="drop",
    )
    out = chain.invoke({"question": "q?"})
    assert (out["cut"], out["dropped"]) == (0, 1)
    assert [s["content"] for s in out["sources"]] == [docs[0].page_content, docs[2].page_content]


@pytest.mark.parametrize("on_overflow", ["cut", "drop"])
def test_history_gives_way_oldest_turn_first(on_overflow: str) -> None:
    history = []
    for i in range(6):
        history += [
            HumanMessage(f"old question {i} " + "x" * 300),
            AIMessage(f"answer {i} " + "y" * 300),
        ]
    llm = EchoChat()
    chain = create_rag_chain(
        llm,
        ListRetriever(documents=[doc(8)]),
        context_window=2400,
        answer_tokens=300,
        on_overflow=on_overflow,
    )
    out = chain.invoke({"question": "q?", "chat_history": history})
    assert out["history_dropped"] > 0 and out["history_dropped"] % 2 == 0  # whole turns
    sent = llm.calls[0]
    kept = [m.text for m in sent[1:-1]]
    assert kept == [m.text for m in history[out["history_dropped"] :]]  # the newest turns stay
    assert [s["id"] for s in out["sources"]] == [1] and out["fit"].fits
    # "cut": turns go until the document's first sentence fits, and the document is cut;
    # "drop": until the whole document fits.
    assert out["cut"] == (1 if on_overflow == "cut" else 0)
    one_more_turn = create_rag_chain(
        EchoChat(),
        ListRetriever(documents=[doc(8)]),
        context_window=2400,
        answer_tokens=300,
        on_overflow=on_overflow,
    ).invoke({"question": "q?", "chat_history": history[out["history_dropped"] - 2 :]})
    assert one_more_turn["history_dropped"] == 2  # no turn was dropped that need not be


@pytest.mark.parametrize("on_overflow", ["cut", "drop"])
def test_history_stays_when_it_is_not_what_keeps_documents_out(on_overflow: str) -> None:
    history = [HumanMessage("Earlier question?"), AIMessage("Earlier answer.")]
    big = doc(200)  # far over the window: cut to a start, or dropped
    out = create_rag_chain(
        EchoChat(),
        ListRetriever(documents=[big]),
        context_window=2000,
        answer_tokens=200,
        on_overflow=on_overflow,
    ).invoke({"question": "q?", "chat_history": history})
    assert out["history_dropped"] == 0
    if on_overflow == "cut":
        assert out["cut"] == 1 and len(out["sources"]) == 1
    else:
        assert out["dropped"] == 1 and out["sources"] == []


def test_window_too_small_for_the_question_is_a_context_window_error() -> None:
    llm = EchoChat()
    chain = create_rag_chain(
        llm, ListRetriever(documents=[doc(3)]), context_window=300, answer_tokens=100
    )
    with pytest.raises(ContextWindowExceededError) as info:
        chain.invoke({"question": "why? " * 100})
    assert info.value.fit is not None and not info.value.fit.fits
    assert llm.calls == []


@pytest.mark.parametrize("question", ["", "   ", None, 3])
def test_empty_question_is_a_value_error_before_retrieval(question: object) -> None:
    retriever = ListRetriever(documents=[doc(1)])
    chain = create_rag_chain(EchoChat(), retriever)
    with pytest.raises(ValueError, match="question") as info:
        chain.invoke({"question": question})
    assert isinstance(info.value, InvalidInputError) and info.value.field == "question"
    assert retriever.asked == 0


@pytest.mark.parametrize("documents", [[], [Document(""), Document(" \n")]])
def test_no_documents_the_answer_says_so_and_no_model_call(documents: list[Document]) -> None:
    llm = EchoChat()
    chain = create_rag_chain(llm, ListRetriever(documents=documents))
    out = chain.invoke({"question": "anything?"})
    assert out["answer"] == NO_DOCUMENTS and out["sources"] == []
    assert llm.calls == []
    chunks = list(chain.stream({"question": "anything?"}))
    assert chunks[0] == {"answer": NO_DOCUMENTS} and chunks[-1]["sources"] == []


def test_stream_gives_answer_deltas_then_one_final_chunk() -> None:
    docs = [doc(3, 0, title="T"), doc(3, 5)]
    chain = create_rag_chain(EchoChat(words=8), ListRetriever(documents=docs))
    invoked = chain.invoke({"question": "What?"})
    chunks = list(chain.stream({"question": "What?"}))
    assert len(chunks) > 2
    assert all(set(c) == {"answer"} for c in chunks[:-1])
    assert set(chunks[-1]) == {"sources", "fit", "dropped", "cut", "history_dropped"}
    assert "".join(c["answer"] for c in chunks[:-1]) == invoked["answer"]
    assert chunks[-1]["sources"] == invoked["sources"]


async def test_async_twins_agree() -> None:
    docs = [doc(3, 0), doc(60, 100)]
    chain = create_rag_chain(EchoChat(words=6), ListRetriever(documents=docs), context_window=1500)
    sync = chain.invoke({"question": "What?"})
    out = await chain.ainvoke({"question": "What?"})
    chunks = [c async for c in chain.astream({"question": "What?"})]
    assert out["answer"] == sync["answer"] == "".join(c.get("answer", "") for c in chunks)
    assert out["sources"] == sync["sources"] == chunks[-1]["sources"]
    assert (out["dropped"], out["cut"]) == (sync["dropped"], sync["cut"])


def test_custom_prompt_and_composition() -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "DOCS:\n{context}\nQ: {question}")])
    llm = EchoChat(reply="ok")
    chain = create_rag_chain(llm, ListRetriever(documents=[doc(1)]), prompt=prompt)
    answer_only = chain | RunnableLambda(lambda o: o["answer"].upper())
    assert answer_only.invoke({"question": "q"}) == "OK"
    assert sent_prompt(llm).startswith("DOCS:\n[1]\n" + SENTENCES[0])
    with pytest.raises(InvalidInputError, match="chat_history"):
        chain.invoke({"question": "q", "chat_history": [HumanMessage("hi")]})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ChatPromptTemplate.from_messages([("human", "{question}")])}, "prompt"),
        (
            {"prompt": ChatPromptTemplate.from_messages([("human", "{context}{question}{x}")])},
            "prompt",
        ),
        ({"answer_tokens": 0}, "answer_tokens"),
        ({"on_overflow": "truncate"}, "on_overflow"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        create_rag_chain(EchoChat(), ListRetriever(documents=[]), **kwargs)
    assert info.value.field == field


def test_property_random_documents_never_overflow() -> None:
    rng, answered = random.Random(7), 0
    for _ in range(150):
        docs = [doc(rng.randint(0, 50), rng.randint(0, 340)) for _ in range(rng.randint(1, 8))]
        history = [HumanMessage("h" * rng.randint(0, 400)), AIMessage("a" * rng.randint(0, 400))]
        window, answer = rng.randint(700, 4000), rng.randint(1, 300)
        llm = EchoChat()
        chain = create_rag_chain(
            llm,
            ListRetriever(documents=docs),
            context_window=window,
            answer_tokens=answer,
            on_overflow=rng.choice(["cut", "drop"]),
        )
        question = "q " * rng.randint(1, 50)
        try:
            out = chain.invoke({"question": question, "chat_history": history})
        except ContextWindowExceededError:  # only when the bare question cannot fit
            bare = chain._render(question, [], [])
            assert Budget(llm, window).count(bare) + answer > window
            assert llm.calls == []
            continue
        non_empty = sum(1 for d in docs if d.page_content.strip())
        assert len(out["sources"]) + out["dropped"] == non_empty
        if llm.calls:
            answered += 1
            assert Budget(llm, window).count(llm.calls[0]) + answer <= window
    assert answered > 100
