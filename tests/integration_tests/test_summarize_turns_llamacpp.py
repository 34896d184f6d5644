"""Summaries in turns on the real engine: SmolLM2's own tokenizer and chat template.

Every prompt the summarizer sends is recorded by a callback and counted again with the model:
each fits the window it was given (totalContextLength, lower than the model's 2048) with
maxGenerationLength left, and carries max_tokens. Nothing is asserted of the model's words.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from langchain_multillm import ChatLlamaCpp
from langchain_multillm.chains import TurnOptions, create_summarize_chain, summarize_turns

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(600)]

WINDOW, ANSWER = 640, 24
TOPICS = [
    "the budget for the new library wing",
    "the opening hours on Sundays",
    "hiring two more staff for the archive",
    "the broken heating in the reading room",
    "a school visit programme in spring",
]


def transcript() -> str:
    lines = [
        f"{name}: About {TOPICS[i % 5]}, I think we should decide by Friday. Item {i}."
        for i, name in zip(range(30), ["Ann", "Ben", "Cy"] * 10, strict=False)
    ]
    lines.insert(
        7, "Ben: " + " ".join(f"Point {k} is that {TOPICS[k % 5]} matters." for k in range(20))
    )
    lines.insert(3, "and a line without a speaker, which belongs to the last one")
    return "\n".join(lines)


class Sent(BaseCallbackHandler):
    """Records every chat prompt, its max_tokens, and the progress events."""

    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []
        self.max_tokens: list[Any] = []
        self.progress: list[dict[str, int]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], **kw: Any
    ) -> None:
        self.prompts.extend(messages)
        self.max_tokens.append((kw.get("invocation_params") or {}).get("max_tokens"))

    def on_custom_event(self, name: str, data: Any, **kw: Any) -> None:
        if name == "summarize_progress":
            self.progress.append(data)


@pytest.fixture(scope="module")
def chat(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, seed=1)


def assert_every_prompt_fits(chat: ChatLlamaCpp, sent: Sent, calls: int) -> None:
    assert len(sent.prompts) == calls
    assert sent.max_tokens == [ANSWER] * calls
    for messages in sent.prompts:
        assert chat.count_tokens(messages) + ANSWER <= WINDOW
        assert chat.check_fit(messages, max_tokens=ANSWER).fits


def test_fields_2_in_order_reduced_and_consolidated(chat: ChatLlamaCpp) -> None:
    text = transcript()
    assert chat.count_tokens(text) > WINDOW  # several batches at least
    options = TurnOptions(
        create_new_turn_after=80,
        summary_turns=2,
        max_new_turns=8,
        max_generation_length=ANSWER,
        total_context_length=WINDOW,
        fields=2,
        reduce_summary=True,
        reduce_prompt="Merge these notes into a shorter summary:\n{}",
        consolidate_summary=True,
    )
    chain = create_summarize_chain(
        chat,
        mode="turns",
        template="Summary so far:\n{}\n\nSummarize the next part of the meeting:\n{}",
        options=options,
    )
    turns = chain.split(text)
    assert all(chat.count_tokens(t) <= 80 for t in turns)
    assert sum(t.startswith("Ben: Point") for t in turns) >= 3  # the long turn, cut
    assert turns[3].startswith("Cy: and a line without a speaker")  # the last speaker's
    sent = Sent()
    out = chain.invoke(text, {"callbacks": [sent]})
    assert out["turns"] == len(turns) and out["batches"] >= 3 and out["rounds"] >= 1
    assert out["calls"] == out["batches"] + len(
        [p for p in sent.prompts if "Merge these" in p[0].text]
    )
    assert_every_prompt_fits(chat, sent, out["calls"])
    done = [p["done"] for p in sent.progress]
    assert done == sorted(done) and sent.progress[-1] == {
        "done": len(turns) + 1,
        "total": len(turns) + 1,
    }
    assert len(sent.progress) == out["batches"] + 1
    # consolidated: no two consecutive lines of the same speaker
    labels = [line.split(":")[0] for line in out["summary"].splitlines() if ":" in line]
    assert all(a != b for a, b in itertools.pairwise(labels))


async def test_fields_1_parallel_batches_within_the_window(chat: ChatLlamaCpp) -> None:
    sent = Sent()
    seen: list[tuple[int, int]] = []
    options = TurnOptions(
        create_new_turn_after=80,
        max_new_turns=10,
        max_generation_length=ANSWER,
        total_context_length=WINDOW,
        concurrency=2,
    )
    summary = await summarize_turns(
        chat,
        transcript(),
        "Summarize this part of a meeting in one sentence:\n{}",
        options,
        lambda done, total: seen.append((done, total)),
        config={"callbacks": [sent]},
    )
    assert isinstance(summary, str)
    assert len(seen) == len(sent.prompts) >= 2
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert_every_prompt_fits(chat, sent, len(sent.prompts))
