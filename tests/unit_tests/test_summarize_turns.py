"""create_summarize_chain(mode="turns"): the replaced gateway's summaries on the fit contract.

The model here counts one token per word and per line break, exactly (a fake whose words do
not matter: each answer is a few labelled lines); every prompt it receives is recorded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from langchain_multillm import ContextWindowExceededError, InvalidInputError
from langchain_multillm._base import ChatRequest, MultiLLMChatModel, Prompt
from langchain_multillm.chains import (
    SummarizeChain,
    SummaryReduceError,
    TurnOptions,
    TurnSummarizer,
    consolidate_turns,
    create_summarize_chain,
    split_turns,
    summarize_turns,
)
from langchain_multillm.fit import Limits
from tests.unit_tests.chain_fakes import EchoChat

SPEAKERS = ["Alice", "Bob", "Carol"]


def words(text: str, newline: int = 1) -> int:
    return len(text.split()) + newline * text.count("\n")


class WordChat(MultiLLMChatModel):
    """Counts a token per word and ``newline`` per line break (4 more per message), exactly;
    answers ``lines`` lines of ``answer_words`` words; records every prompt and its params."""

    model_name: str = "words"
    window: int = 1000
    newline: int = 1
    lines: int = 2
    answer_words: int = 4
    answer: Callable[[str], str] | None = None
    delay: float = 0.0
    count_delay: float = 0.0
    sent: list[str] = Field(default_factory=list)
    params: list[dict[str, Any]] = Field(default_factory=list)
    _in_flight: int = PrivateAttr(default=0)
    _most: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "words"

    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.window)

    def _max_token_bytes(self) -> int | None:
        return 10**6  # no lower bound refuses: every decision is the exact count

    def _count_exact(self, prompt: Prompt) -> int | None:
        time.sleep(self.count_delay)  # a tokenizer that takes time (or a server's /tokenize)
        if prompt.text is not None:
            return words(prompt.text, self.newline)
        return sum(words(m.text, self.newline) + 4 for m in prompt.messages or [])

    def _health(self) -> Any:
        raise NotImplementedError

    def _reply(self, req: ChatRequest) -> ChatResult:
        text = req.messages[-1].text
        with self._lock:
            self.sent.append(text)
            self.params.append(dict(req.params))
            k = len(self.sent)
        if self.answer is not None:
            out = self.answer(text)
        else:
            out = "\n".join(
                f"{SPEAKERS[i % 3]}: " + " ".join(["w"] * (self.answer_words - 1)) + f" {k}"
                for i in range(self.lines)
            )
        return ChatResult(generations=[ChatGeneration(message=AIMessage(out))])

    def _chat(self, req: ChatRequest) -> ChatResult:
        return self._reply(req)

    async def _achat(self, req: ChatRequest) -> ChatResult:
        self._in_flight += 1
        self._most = max(self._most, self._in_flight)
        try:
            await asyncio.sleep(self.delay)
            return self._reply(req)
        finally:
            self._in_flight -= 1

    def _chat_stream(self, req: ChatRequest) -> Any:
        raise NotImplementedError

    def _achat_stream(self, req: ChatRequest) -> Any:
        raise NotImplementedError

    @property
    def most_in_flight(self) -> int:
        return self._most

    def prompt_tokens(self, text: str) -> int:
        """A sent prompt's count: one user message."""
        return words(text, self.newline) + 4


def transcript(lines: int, size: int = 10) -> str:
    return "\n".join(
        f"{SPEAKERS[i % 3]}: " + " ".join(f"x{i}" for _ in range(size - 1)) + "."
        for i in range(lines)
    )


def assert_fits(llm: WordChat, window: int, max_gen: int) -> None:
    assert llm.sent
    for text in llm.sent:
        assert llm.prompt_tokens(text) + max_gen <= window
    assert all(p["max_tokens"] == max_gen for p in llm.params)


def turns_chain(llm: Any, template: str | None = None, **options: Any) -> TurnSummarizer:
    """A turn summarizer; small turns and answers by default (the windows here are small)."""
    options.setdefault("create_new_turn_after", 40)
    options.setdefault("max_generation_length", 40)
    return create_summarize_chain(
        llm, mode="turns", template=template, options=TurnOptions(**options)
    )


# ---- turns: speaker lines, sentences, token boundaries ----


def test_lines_become_speaker_turns_as_the_gateway_read_them() -> None:
    text = "Alice: hello there\n\n  and more from Alice\nBob : fine.\n[00:12] Dr. Who: yes\nat 10:30 we met"
    turns = split_turns(text, 50, words)
    assert turns == [
        "Alice: hello there",
        "Alice: and more from Alice",  # a line without a label is the last speaker's
        "Bob: fine.",
        "[00:12] Dr. Who: yes",
        "[00:12] Dr. Who: at 10:30 we met",  # "at 10" is no label: a time
    ]
    assert split_turns("Plain prose.\nNo speakers here", 50, words) == [
        "Plain prose.",
        "No speakers here",
    ]


def test_a_long_turn_is_cut_at_sentences_each_piece_within_the_cap() -> None:
    sentences = [f"Sentence {i} has " + "word " * (i % 5 + 3) + "end." for i in range(30)]
    turns = split_turns("Alice: " + " ".join(sentences), 25, words)
    assert len(turns) > 5
    assert all(t.startswith("Alice: ") and words(t) <= 25 for t in turns)
    assert all(t.endswith("end.") for t in turns)  # cut between sentences, none cut inside
    assert " ".join(t.removeprefix("Alice: ") for t in turns) == " ".join(sentences)


def test_a_sentence_too_long_is_cut_at_token_boundaries_and_ends() -> None:
    def chars(s: str) -> int:  # a tokenizer of 3 characters a token
        return -(-len(s) // 3)

    one_word = "x" * 5000  # no space, no sentence end: the gateway left it whole
    turns = split_turns(f"Bob: {one_word}\nAlice: short", 40, chars)
    assert all(chars(t) <= 40 for t in turns) and turns[-1] == "Alice: short"
    assert "".join(t.removeprefix("Bob: ") for t in turns[:-1]) == one_word
    spaced = " ".join(f"w{i}" for i in range(400))
    turns = split_turns(spaced, 30, chars)
    assert all(chars(t) <= 30 for t in turns) and " ".join(turns) == spaced


def test_a_cap_too_small_for_the_label_is_a_typed_error() -> None:
    with pytest.raises(InvalidInputError) as info:
        split_turns("Alexandra Longname: " + "word " * 50, 2, words)
    assert info.value.field == "createNewTurnAfter"


# ---- batches within the budget, counted exactly ----


@pytest.mark.parametrize("newline", [1, 3], ids=["additive", "joins-cost-more"])
def test_every_prompt_fits_and_holds_at_most_max_new_turns(newline: int) -> None:
    llm = WordChat(window=220, newline=newline)
    chain = turns_chain(
        llm, "Summarize:\n{}", create_new_turn_after=30, max_new_turns=6, max_generation_length=60
    )
    out = chain.invoke(transcript(40, 12))
    assert_fits(llm, 220, 60)
    sent_turns = [line for text in llm.sent for line in text.splitlines()[1:]]
    # every turn sent once (the batches run in parallel: in any order)
    assert sorted(sent_turns) == sorted(chain.split(transcript(40, 12)))
    assert all(len(text.splitlines()) - 1 <= 6 for text in llm.sent)
    assert out["batches"] == len(llm.sent) == out["calls"] and out["turns"] == 40


def test_batches_fill_the_window_not_a_fixed_count() -> None:
    llm = WordChat(window=200)
    turns_chain(
        llm, "S:\n{}", create_new_turn_after=40, max_new_turns=50, max_generation_length=50
    ).invoke(transcript(60, 10))
    # 10-token turns, 150 tokens of room: each full batch is within a turn of the limit; the
    # batches run in parallel, so the last one (it holds the last turn, x59) may be sent first
    full = [text for text in llm.sent if "x59" not in text]
    assert len(full) == len(llm.sent) - 1
    for text in full:
        assert 200 - 50 - 11 < llm.prompt_tokens(text) <= 200 - 50


def test_total_context_length_only_lowers_the_window() -> None:
    llm = WordChat(window=300)
    turns_chain(llm, "S:\n{}", total_context_length=5000, max_new_turns=50).invoke(transcript(60))
    assert_fits(llm, 300, 40)
    lower = WordChat(window=300)
    turns_chain(lower, "S:\n{}", total_context_length=150, max_new_turns=50).invoke(transcript(60))
    assert_fits(lower, 150, 40)
    assert len(lower.sent) > len(llm.sent)


def test_a_window_that_cannot_hold_one_turn_is_refused_before_any_call() -> None:
    llm = WordChat(window=300)
    with pytest.raises(InvalidInputError) as info:
        turns_chain(llm, "S:\n{}", create_new_turn_after=250, max_generation_length=100)
    assert info.value.field == "createNewTurnAfter" and "at most" in info.value.problem
    assert llm.sent == []


def test_a_model_without_a_window_needs_total_context_length() -> None:
    with pytest.raises(InvalidInputError) as info:
        turns_chain(EchoChat())
    assert info.value.field == "totalContextLength"
    llm = EchoChat(words=3)
    out = turns_chain(llm, total_context_length=2000).invoke(transcript(30))
    assert out["summary"] and out["batches"] >= 1


# ---- fields 2: in order, the last lines carried forward ----


def test_fields_2_carries_the_last_summary_turns_lines_forward() -> None:
    llm = WordChat(window=260, lines=3)
    chain = turns_chain(
        llm,
        "Before:\n{}\nNow:\n{}",
        fields=2,
        summary_turns=2,
        max_new_turns=4,
        max_generation_length=40,
    )
    out = chain.invoke(transcript(20))
    assert_fits(llm, 260, 40)
    assert llm.sent[0].startswith("Before:\n\nNow:\n")  # nothing carried into the first
    for i, text in enumerate(llm.sent[1:], start=1):
        carried = text.split("\nNow:\n")[0].removeprefix("Before:\n").splitlines()
        assert carried == [f"Bob: w w w {i}", f"Carol: w w w {i}"]  # the last 2 of call i
    assert out["summary"].splitlines() == [
        f"{s}: w w w {k}" for k in range(1, len(llm.sent) + 1) for s in SPEAKERS
    ]


def test_fields_2_drops_carried_lines_rather_than_loop_when_a_turn_needs_the_room() -> None:
    # answers of 60-token lines: carrying 3 of them leaves no room for a 40-token turn
    llm = WordChat(window=260, lines=3, answer_words=60)
    out = turns_chain(
        llm,
        "{summary}\n--\n{text}",
        fields=2,
        summary_turns=3,
        create_new_turn_after=40,
        max_generation_length=60,
    ).invoke(transcript(12, 40))
    assert_fits(llm, 260, 60)
    # the first prompt: no carry, 4 turns; then 2 carried lines of 61 tokens and one turn
    # of 40 (the oldest carried line dropped: the turn needs its room)
    assert out["batches"] == 1 + 8
    assert all(len(t.split("\n--\n")[0].splitlines()) == 2 for t in llm.sent[1:])
    assert all(len(t.split("\n--\n")[1].splitlines()) == 1 for t in llm.sent[1:])


def test_summary_turns_0_carries_nothing() -> None:
    llm = WordChat(window=300)
    turns_chain(llm, "{}|{}", fields=2, summary_turns=0, max_new_turns=3).invoke(transcript(9))
    assert all(text.startswith("|") for text in llm.sent)


# ---- fields 1: batches in parallel, bounded, joined in order ----


def test_fields_1_runs_batches_concurrently_within_the_bound_and_joins_in_order() -> None:
    first = lambda text: text.splitlines()[1]  # noqa: E731  the batch's first turn
    llm = WordChat(window=400, delay=0.05, answer=first)
    out = turns_chain(llm, "S:\n{}", max_new_turns=2, concurrency=3).invoke(transcript(20))
    assert llm.most_in_flight == 3
    assert out["summary"].splitlines() == transcript(20).splitlines()[::2]


# ---- reduce: as many rounds as it takes, never skipped ----


def test_reduce_in_one_round_when_it_fits() -> None:
    llm = WordChat(window=400)
    out = turns_chain(
        llm, "S:\n{}", max_new_turns=3, reduce_summary=True, reduce_prompt="MERGE:\n{}"
    ).invoke(transcript(12))
    assert out["rounds"] == 1 and out["calls"] == out["batches"] + 1
    assert llm.sent[-1].startswith("MERGE:\n") and llm.sent[-1].count("\n") == 2 * 4
    assert len(out["summary"].splitlines()) == 2  # the reduce's answer is the summary


def test_reduce_takes_rounds_until_one_prompt_holds_the_summary() -> None:
    llm = WordChat(window=200, lines=5, answer_words=8)
    out = turns_chain(
        llm,
        "S:\n{}",
        max_new_turns=2,
        max_generation_length=50,
        reduce_summary=True,
        reduce_prompt="MERGE {text}",
    ).invoke(transcript(40))
    assert out["rounds"] >= 2
    reduces = [t for t in llm.sent if t.startswith("MERGE")]
    assert len(reduces) > out["rounds"]  # a round of several prompts, then the last one
    assert_fits(llm, 200, 50)
    assert len(out["summary"].splitlines()) == 5


def test_a_reduce_that_cannot_shrink_is_a_typed_error() -> None:
    echo = lambda text: text.split("\n", 1)[-1]  # noqa: E731  gives back what it was given
    llm = WordChat(window=200, answer=echo)
    chain = turns_chain(
        llm,
        "S:\n{}",
        max_new_turns=4,
        max_generation_length=50,
        reduce_summary=True,
        reduce_prompt="MERGE:\n{}",
    )
    with pytest.raises(SummaryReduceError, match="did not shrink") as info:
        chain.invoke(transcript(40))
    assert isinstance(info.value, ContextWindowExceededError)


def test_default_reduce_prompt_follows_the_type() -> None:
    llm = WordChat(window=400)
    turns_chain(llm, "S:\n{}", reduce_summary=True, type="extractive").invoke(transcript(5))
    assert "word for word" in llm.sent[-1] and "partial summaries" in llm.sent[-1]


# ---- consolidate ----


def test_consolidate_merges_lines_of_the_same_speaker() -> None:
    lines = ["Alice: a", "Alice : b", "Bob: c", "- a bullet", "Bob: d", "Bob: e", "", "Alice: f"]
    assert consolidate_turns(lines) == [
        "Alice: a b",
        "Bob: c",
        "- a bullet",
        "Bob: d e",
        "Alice: f",
    ]
    llm = WordChat(window=400, lines=3, answer=lambda _: "Ann: one\nAnn: two\nBen: three")
    out = turns_chain(llm, "S:\n{}", max_new_turns=5, consolidate_summary=True).invoke(
        transcript(10)
    )
    assert out["summary"].splitlines() == [
        "Ann: one two",
        "Ben: three",
        "Ann: one two",
        "Ben: three",
    ]


# ---- progress and cancellation ----


async def test_progress_is_reported_per_batch_and_ends_at_the_total() -> None:
    llm = WordChat(window=300)
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    chain = turns_chain(llm, "{}|{}", fields=2, max_new_turns=4, reduce_summary=True)
    result = await chain.asummarize(transcript(18), progress=progress)
    assert [d for d, _ in seen] == [4, 8, 12, 16, 18, 19]
    assert {t for _, t in seen} == {19} and result.batches == 5 and result.calls == 6


async def test_progress_in_parallel_counts_every_turn_once() -> None:
    llm = WordChat(window=300, delay=0.01)
    seen: list[tuple[int, int]] = []
    chain = turns_chain(llm, "S:\n{}", max_new_turns=3, concurrency=4)
    await chain.asummarize(transcript(20), progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 7 and seen[-1] == (20, 20)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


async def test_an_error_raised_by_progress_stops_between_batches() -> None:
    llm = WordChat(window=300)

    def progress(done: int, total: int) -> None:
        if done >= 8:
            raise RuntimeError("cancelled by the job")

    chain = turns_chain(llm, "{}|{}", fields=2, max_new_turns=4)
    with pytest.raises(RuntimeError, match="cancelled by the job"):
        await chain.asummarize(transcript(40), progress=progress)
    assert len(llm.sent) == 2


async def test_cancelling_the_task_abandons_the_call_in_flight() -> None:
    llm = WordChat(window=300, delay=0.3)
    started = asyncio.Event()
    chain = turns_chain(llm, "{}|{}", fields=2, max_new_turns=4)
    task = asyncio.create_task(
        chain.asummarize(transcript(40), progress=lambda d, t: started.set())
    )
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    assert len(llm.sent) == 1  # the second call was abandoned before it answered


async def test_guard_awaits_every_call() -> None:
    llm = WordChat(window=1000)
    guarded: list[int] = []

    async def guard(coro: Any) -> Any:
        guarded.append(1)
        return await coro

    text = await summarize_turns(
        llm, transcript(12), "S:\n{}", TurnOptions(max_new_turns=4), guard=guard
    )
    assert text and len(guarded) == len(llm.sent) == 3


class Events(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, **kw: Any) -> None:
        if name == "summarize_progress":
            self.events.append(data)


async def test_progress_reaches_langchain_callbacks() -> None:
    handler = Events()
    chain = turns_chain(WordChat(window=300), "S:\n{}", max_new_turns=5)
    await chain.ainvoke(transcript(10), {"callbacks": [handler]})
    assert handler.events[-1] == {"done": 10, "total": 10} and len(handler.events) == 2


# ---- templates, options, the old API ----


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("A {} B", 1),
        ("T: {text}", 1),
        ("{0} then {1}", 2),
        ("S {} T {}", 2),
        ("{summary}/{text}", 2),
    ],
)
def test_templates_positional_or_named(template: str, fields: int) -> None:
    llm = WordChat(window=300)
    turns_chain(llm, template, fields=fields).invoke("Alice: hi there")
    assert "Alice: hi there" in llm.sent[0]


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("no placeholder", 1),
        ("{} {}", 1),
        ("{}", 2),
        ("{text}", 2),
        ("{a}", 1),
        ("{", 1),
        ("{} {0}", 2),
    ],
)
def test_bad_templates_name_the_field(template: str, fields: int) -> None:
    with pytest.raises(InvalidInputError) as info:
        turns_chain(WordChat(), template, fields=fields)
    assert info.value.field == "template"


def test_options_from_a_gateway_flavor() -> None:
    flavor = {
        "name": "llama",
        "modelName": "smollm2",
        "totalContextLength": 2048,
        "maxGenerationLength": 256,
        "tokenizerClass": "LlamaTokenizer",
        "createNewTurnAfter": 250,
        "summaryTurns": 3,
        "maxNewTurns": 9,
        "temperature": 0.2,
        "top_p": 0.7,
        "reduceSummary": False,
        "consolidateSummary": False,
        "reduce_prompt": "reduce-file",
        "type": "abstractive",
    }
    opts = TurnOptions.from_flavor(flavor, fields=2, reduce_prompt="Reduce: {}")
    assert opts == TurnOptions(
        create_new_turn_after=250,
        summary_turns=3,
        max_new_turns=9,
        max_generation_length=256,
        total_context_length=2048,
        fields=2,
        reduce_prompt="Reduce: {}",
        temperature=0.2,
        top_p=0.7,
    )
    llm = WordChat(window=4096)
    TurnSummarizer(llm, "{}\n{}", opts).invoke(transcript(3))
    assert llm.params[0] == {"temperature": 0.2, "top_p": 0.7, "max_tokens": 256}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"fields": 3}, "fields"),
        ({"type": "poem"}, "type"),
        ({"create_new_turn_after": 0}, "createNewTurnAfter"),
        ({"summary_turns": -1}, "summaryTurns"),
        ({"max_new_turns": 0}, "maxNewTurns"),
        ({"max_generation_length": True}, "maxGenerationLength"),
        ({"total_context_length": 0}, "totalContextLength"),
        ({"reduce_summary": "yes"}, "reduceSummary"),
        ({"top_p": 0}, "top_p"),
        ({"temperature": 3}, "temperature"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        TurnOptions(**options)
    assert info.value.field == field


def test_the_old_modes_are_unchanged_and_refuse_turn_settings() -> None:
    assert isinstance(create_summarize_chain(EchoChat()), SummarizeChain)
    with pytest.raises(InvalidInputError) as info:
        create_summarize_chain(EchoChat(), template="{}")  # type: ignore[call-overload]
    assert info.value.field == "template"
    chain = create_summarize_chain(
        WordChat(window=600), mode="turns", turn_tokens=60, kind="markdown"
    )
    assert chain.options.create_new_turn_after == 60 and chain.options.type == "markdown"


def test_markdown_keeps_each_batch_as_a_block() -> None:
    llm = WordChat(window=300, answer=lambda _: "## Part\n\n- a point")
    out = turns_chain(llm, "S:\n{}", max_new_turns=5, type="markdown").invoke(transcript(10))
    assert out["summary"] == "## Part\n\n- a point\n\n## Part\n\n- a point"


def test_sync_invoke_works_inside_a_running_loop() -> None:
    async def inside() -> dict[str, Any]:
        return turns_chain(WordChat(window=300), "S:\n{}").invoke(transcript(5))

    assert asyncio.run(inside())["turns"] == 5


@pytest.mark.parametrize("text", ["", "  \n ", None, 5])
def test_empty_text_is_refused(text: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        turns_chain(WordChat()).invoke(text)
    assert info.value.field == "text"


async def test_in_parallel_an_error_is_raised_as_it_is_and_stops_the_other_calls() -> None:
    llm = WordChat(window=300, delay=0.05)

    def progress(done: int, total: int) -> None:
        raise RuntimeError("cancelled by the job")

    chain = turns_chain(llm, "S:\n{}", max_new_turns=2, concurrency=2)
    with pytest.raises(RuntimeError, match="cancelled by the job"):  # not an ExceptionGroup
        await chain.asummarize(transcript(40), progress=progress)
    await asyncio.sleep(0.2)
    assert len(llm.sent) <= 3  # of 20 batches: the calls not yet answered were abandoned


async def test_in_parallel_cancelling_the_task_abandons_every_call() -> None:
    llm = WordChat(window=300, delay=0.2)
    task = asyncio.create_task(
        turns_chain(llm, "S:\n{}", max_new_turns=2, concurrency=4).asummarize(transcript(40))
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert llm.sent == []


def test_a_character_that_cannot_fit_under_the_label_is_a_typed_error() -> None:
    def heavy(s: str) -> int:  # "@" costs 9 tokens
        return len(s.split()) + 8 * s.count("@")

    assert split_turns("Al: a b c d e f g h", 5, heavy)[0] == "Al: a b c d"
    with pytest.raises(InvalidInputError) as info:
        split_turns("Al: a b c d e f g h @ i j", 5, heavy)
    assert info.value.field == "createNewTurnAfter" and "'@'" in info.value.problem


async def test_counting_runs_off_the_event_loop() -> None:
    llm = WordChat(window=300, count_delay=0.002)
    chain = turns_chain(llm, "{}|{}", fields=2, max_new_turns=4)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await chain.asummarize(transcript(60))
    elapsed = time.perf_counter() - started
    tick.cancel()
    # the loop kept turning while ~200 slow counts ran (blocked, it would tick ~15 times)
    assert elapsed > 0.2 and ticks > elapsed / 0.001 / 4
