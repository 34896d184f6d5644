"""create_rag_chain with a chat model of another package (the conservative estimate), with
this package's vLLM client on the in-process fake server (exact counts), and wrapped models."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, convert_to_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from langchain_multillm import ContextWindowExceededError, InvalidInputError
from langchain_multillm.backends.vllm_server import ChatVLLMServer
from langchain_multillm.chains import create_rag_chain
from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains.rag import NO_DOCUMENTS
from tests.unit_tests.chain_fakes import EchoChat, ListRetriever
from tests.unit_tests.fake_server import FakeServer, completion

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


# ---- the answer budget: the model's own max_tokens by default ----


def vllm(fake: FakeServer, **kwargs: Any) -> ChatVLLMServer:
    """This package's vLLM client on the in-process fake server (exact counts, known window)."""
    return ChatVLLMServer(model="m", **fake.clients(), **kwargs)


TWO_DOCS = [doc(2, 0, title="A"), doc(2, 10, title="B")]


def test_default_answer_budget_is_the_models_own_max_tokens() -> None:
    fake = FakeServer(window=600)
    llm = vllm(fake, max_tokens=48)
    out = create_rag_chain(llm, ListRetriever(documents=TWO_DOCS)).invoke("What is item 1?")
    assert out["fit"].fits and out["fit"].max_tokens == 48
    assert out["fit"].prompt_tokens + 48 <= 600 and out["sources"]
    assert fake.bodies[-1]["max_tokens"] == 48  # the model's own, applied by the model
    # 512 kept for the answer of a 600-token window leaves no room for the question
    with pytest.raises(ContextWindowExceededError) as info:
        create_rag_chain(llm, ListRetriever(documents=TWO_DOCS), answer_tokens=512).invoke("q?")
    assert "answer_tokens=512" in str(info.value)
    assert len(fake.bodies) == 1  # refused before any request


def test_a_bound_max_tokens_is_the_models_own() -> None:
    fake = FakeServer(window=600)
    llm = vllm(fake, max_tokens=300).bind(max_tokens=40)
    out = create_rag_chain(llm, ListRetriever(documents=TWO_DOCS)).invoke("What is item 1?")
    assert out["fit"].max_tokens == 40 and fake.bodies[-1]["max_tokens"] == 40


def test_answer_tokens_given_is_sent_to_this_packages_models() -> None:
    fake = FakeServer(window=2000)
    llm = vllm(fake, max_tokens=48)
    out = create_rag_chain(llm, ListRetriever(documents=TWO_DOCS), answer_tokens=100).invoke("q")
    assert out["fit"].max_tokens == 100 and fake.bodies[-1]["max_tokens"] == 100


@pytest.mark.parametrize(("window", "kept"), [(800, 200), (4000, 512), (None, 512)])
def test_default_when_the_model_sets_no_max_tokens(window: int | None, kept: int) -> None:
    llm = EchoChat()
    out = create_rag_chain(llm, ListRetriever(documents=[doc(1)]), context_window=window).invoke(
        "q?"
    )
    assert out["fit"].max_tokens == kept
    assert "max_tokens" not in llm.call_kwargs[0]  # another package's model: nothing sent


def test_this_packages_model_without_max_tokens_is_sent_the_default() -> None:
    fake = FakeServer(window=1200)
    out = create_rag_chain(vllm(fake), ListRetriever(documents=TWO_DOCS)).invoke("q?")
    assert out["fit"].max_tokens == 300 and fake.bodies[-1]["max_tokens"] == 300


def test_a_foreign_models_own_max_tokens_is_kept_free_and_not_sent() -> None:
    llm = EchoChat(max_tokens=64)
    out = create_rag_chain(llm, ListRetriever(documents=[doc(1)]), context_window=1000).invoke("q")
    assert out["fit"].max_tokens == 64 and "max_tokens" not in llm.call_kwargs[0]


@pytest.mark.parametrize("answer_tokens", [None, 200])
def test_refusal_names_answer_tokens(answer_tokens: int | None) -> None:
    llm = EchoChat(max_tokens=200)
    chain = create_rag_chain(
        llm, ListRetriever(documents=[doc(3)]), context_window=400, answer_tokens=answer_tokens
    )
    with pytest.raises(ContextWindowExceededError, match="answer_tokens") as info:
        chain.invoke({"question": "why? " * 50})
    assert "200 tokens are kept free for the answer" in str(info.value)
    assert llm.calls == []


# ---- wrapped models: counted through the models inside, called through the wrapper ----


def test_bound_kwargs_reach_the_model_and_count() -> None:
    llm = EchoChat()
    out = create_rag_chain(
        llm.bind(max_tokens=40, stop=["\n"]), ListRetriever(documents=[doc(2)]), context_window=900
    ).invoke("q?")
    assert out["fit"].max_tokens == 40
    assert llm.call_kwargs[0]["max_tokens"] == 40 and llm.calls  # the binding was called
    tool = {"type": "function", "function": {"name": "t", "description": "x" * 400}}
    msgs = [HumanMessage("hello")]
    assert Budget(llm.bind(tools=[tool])).count(msgs) > Budget(llm).count(msgs) + 400


def test_with_config_keeps_its_config() -> None:
    seen: list[list[str]] = []

    class Tags(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kw: Any) -> None:
            seen.append(kw.get("tags") or [])

    llm = EchoChat(reply="ok").with_config(tags=["from-wrapper"], callbacks=[Tags()])
    out = create_rag_chain(llm, ListRetriever(documents=[doc(1)])).invoke("q?")
    assert out["answer"] == "ok" and seen and "from-wrapper" in seen[0]


def test_with_retry_retries() -> None:
    llm = EchoChat(reply="third time", failures=2)
    wrapped = llm.with_retry(retry_if_exception_type=(ConnectionError,), stop_after_attempt=3)
    out = create_rag_chain(wrapped, ListRetriever(documents=[doc(1)])).invoke("q?")
    assert out["answer"] == "third time" and llm.attempts == 3


def test_with_fallbacks_falls_back_and_the_tightest_window_holds() -> None:
    wide, narrow = FakeServer(window=4000), FakeServer(window=700)
    wide.chat = [httpx.Response(500, json={"error": {"message": "boom"}})]
    narrow.chat = [httpx.Response(200, json=completion("from the fallback"))]
    primary = vllm(wide, max_retries=0, max_tokens=30)
    llm = primary.with_fallbacks([vllm(narrow, max_tokens=60)])
    docs = [doc(20, 0), doc(20, 100)]
    out = create_rag_chain(llm, ListRetriever(documents=docs)).invoke("What is item 3?")
    assert out["answer"] == "from the fallback"
    assert out["fit"].max_tokens == 60  # the largest own max_tokens is kept free
    assert [b["max_tokens"] for b in wide.bodies + narrow.bodies] == [30, 60]  # each its own
    assert wide.bodies[0]["messages"] == narrow.bodies[0]["messages"]
    assert vllm(narrow).count_tokens(convert_to_messages(narrow.bodies[0]["messages"])) <= 700 - 60
    alone = create_rag_chain(primary, ListRetriever(documents=docs)).pack(
        "What is item 3?", [], docs
    )
    assert len(alone.documents[0].page_content) > len(out["sources"][0]["content"])


def test_nested_wrappers() -> None:
    llm = EchoChat(reply="ok", failures=1)
    wrapped = (
        EchoChat(failures=99)
        .bind(max_tokens=10)
        .with_fallbacks([llm.bind(max_tokens=20).with_retry(stop_after_attempt=2)])
        .with_config(run_name="x")
    )
    out = create_rag_chain(wrapped, ListRetriever(documents=[doc(1)])).invoke("q?")
    assert out["answer"] == "ok" and out["fit"].max_tokens == 20
    assert llm.call_kwargs[0]["max_tokens"] == 20


@pytest.mark.parametrize(
    "llm",
    [
        RunnableLambda(lambda x: AIMessage("hi")),
        EchoChat() | StrOutputParser(),
        RunnableLambda(lambda x: AIMessage("hi")).with_fallbacks([EchoChat()]),
        "not a model",
    ],
)
def test_not_a_chat_model_is_refused_by_name(llm: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        create_rag_chain(llm, ListRetriever(documents=[]))
    assert info.value.field == "llm" and "with_fallbacks" in info.value.problem
