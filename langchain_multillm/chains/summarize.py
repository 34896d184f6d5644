"""``create_summarize_chain``: long texts and transcripts summarized by prompts that all fit.

The text is split into turns of about ``turn_tokens`` tokens, at speaker turns for a
transcript and at sentence ends otherwise. ``map_reduce`` summarizes the turns in groups that
fit the model's window (one batch, so engines that batch run them together), then reduces the
summaries the same way until one is left; ``refine`` carries one summary through the groups in
order. Every prompt is counted with the model's own tokenizer (a conservative estimate for chat
models of other packages) and checked before it is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig

from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains._text import merge, pieces_within, split_speakers
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError

__all__ = ["SummarizeChain", "create_summarize_chain"]

Mode = Literal["map_reduce", "refine"]
Kind = Literal["abstractive", "extractive", "markdown"]

INSTRUCTIONS: dict[str, str] = {
    "abstractive": (
        "Summarize the text the user gives you in a few sentences of your own. Keep names, "
        "numbers and decisions. Write only the summary."
    ),
    "extractive": (
        "From the text the user gives you, copy the most important sentences word for word, "
        "one per line, each starting with '- '. Add no words of your own."
    ),
    "markdown": (
        "Summarize the text the user gives you as Markdown: a short '## ' heading, then bullet "
        "points with the key points, names, numbers and decisions. Write only the Markdown."
    ),
}

REDUCE_NOTE = "The text is a set of partial summaries of one longer text, in order."


def _prompt(kind: str, note: str = "") -> ChatPromptTemplate:
    system = f"{INSTRUCTIONS[kind]} {note}".strip()
    return ChatPromptTemplate.from_messages([("system", system), ("human", "{text}")])


REFINE_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "{instructions}"),
        (
            "human",
            "Summary of the text so far:\n{summary}\n\nThe text goes on:\n{text}\n\n"
            "Write the summary of all of it.",
        ),
    ]
)

# The most rounds a map-reduce takes before it gives up (each round at least halves the count).
MAX_ROUNDS = 32


class SummarizeChain(Runnable[Any, dict[str, Any]]):
    """Split, summarize in groups that fit, reduce; see :func:`create_summarize_chain`."""

    def __init__(
        self,
        llm: Runnable[LanguageModelInput, BaseMessage],
        *,
        turn_tokens: int,
        max_turns: int | None,
        mode: Mode,
        kind: Kind,
        reduce_prompt: BasePromptTemplate,
        summary_tokens: int,
        context_window: int | None,
    ) -> None:
        self.llm = llm
        self.turn_tokens = turn_tokens
        self.max_turns = max_turns
        self.mode = mode
        self.kind = kind
        self.map_prompt = _prompt(kind)
        self.reduce_prompt = reduce_prompt
        self.summary_tokens = summary_tokens
        self.budget = Budget(llm, context_window)
        self.name = "SummarizeChain"

    # ---- splitting ----
    def split(self, text: str) -> list[str]:
        """``text`` as turns of about ``turn_tokens`` tokens (speaker turns, then sentences)."""
        cap, count = self.turn_tokens, self.budget.text
        units: list[str] = []
        for piece in split_speakers(text) or [text]:
            units.extend([piece] if count(piece) <= cap else pieces_within(piece, cap, count))
        return merge([(u, count(u)) for u in units], cap, "\n")

    # ---- prompts that fit ----
    def _messages(self, prompt: BasePromptTemplate, text: str, summary: str | None) -> list[Any]:
        values: dict[str, Any] = {"text": text}
        if summary is not None:
            values.update(summary=summary, instructions=INSTRUCTIONS[self.kind])
        return prompt.invoke(values).to_messages()

    def _capacity(self, prompt: BasePromptTemplate, reserve: int = 0) -> int:
        """Text tokens one prompt can carry with ``summary_tokens`` of output kept free."""
        room = self.budget.room(self.summary_tokens)
        if room is None:  # window unknown: one prompt per group of 8 turns, as a fallback
            return 8 * self.turn_tokens
        summary = "" if prompt is REFINE_PROMPT else None
        return room - self.budget.count(self._messages(prompt, "", summary)) - reserve

    def _groups(self, texts: Sequence[str], cap: int) -> list[str]:
        """``texts`` joined into as few groups as fit ``cap`` tokens each."""
        counted = [(t, self.budget.text(t) + 2) for t in texts]
        too_big = [n for _, n in counted if n > cap]
        if too_big:
            raise InvalidInputError(
                "turn_tokens",
                f"a piece of {max(too_big)} tokens does not fit the {cap} tokens of text the "
                f"model's window leaves per prompt; lower turn_tokens or summary_tokens",
            )
        return merge(counted, cap, "\n\n")

    def _ask(self, prompts: list[list[BaseMessage]], config: RunnableConfig) -> list[str]:
        """Check every prompt's fit, then run them as one batch."""
        for messages in prompts:
            report = self.budget.fit(messages, self.summary_tokens)
            if not report.fits:
                raise ContextWindowExceededError(
                    f"a summarization prompt does not fit: {report.reason}; lower turn_tokens or "
                    f"summary_tokens (now {self.summary_tokens})",
                    prompt_tokens=report.prompt_tokens,
                    max_tokens=self.summary_tokens,
                    fit=report,
                    backend="summarize",
                )
        kwargs = {"max_tokens": self.summary_tokens} if self.budget.sends_max_tokens else {}
        outs = self.llm.batch(prompts, config, **kwargs)  # type: ignore[arg-type]
        return [m.text.strip() for m in outs]

    # ---- the modes ----
    def _map_reduce(self, turns: list[str], config: RunnableConfig) -> tuple[str, int]:
        groups = self._groups(turns, self._capacity(self.map_prompt))
        summaries = self._ask([self._messages(self.map_prompt, g, None) for g in groups], config)
        rounds = 1
        reduce_cap = self._capacity(self.reduce_prompt)
        while len(summaries) > 1:
            groups = self._groups(summaries, reduce_cap)
            if len(groups) == len(summaries) or rounds >= MAX_ROUNDS:
                raise ContextWindowExceededError(
                    f"the partial summaries no longer shrink: {len(summaries)} of them, and the "
                    f"window leaves {reduce_cap} tokens of text per prompt; lower summary_tokens",
                    backend="summarize",
                )
            summaries = self._ask(
                [self._messages(self.reduce_prompt, g, None) for g in groups], config
            )
            rounds += 1
        return summaries[0], rounds

    def _refine(self, turns: list[str], config: RunnableConfig) -> tuple[str, int]:
        groups = self._groups(turns, self._capacity(REFINE_PROMPT, reserve=self.summary_tokens))
        (summary,) = self._ask([self._messages(self.map_prompt, groups[0], None)], config)
        for group in groups[1:]:
            (summary,) = self._ask([self._messages(REFINE_PROMPT, group, summary)], config)
        return summary, len(groups)

    # ---- the Runnable ----
    def _run(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("text", f"must be a non-empty string; got {text!r:.80}")
        turns = self.split(text)
        if self.max_turns is not None and len(turns) > self.max_turns:
            raise InvalidInputError(
                "max_turns",
                f"the text splits into {len(turns)} turns of about {self.turn_tokens} tokens; "
                f"max_turns is {self.max_turns}",
            )
        run = self._map_reduce if self.mode == "map_reduce" else self._refine
        summary, rounds = run(turns, config)
        return {"summary": summary, "turns": len(turns), "rounds": rounds}

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """``{"summary", "turns", "rounds"}`` for a text (or ``{"text": ...}``)."""
        return self._call_with_config(self._run, input, config, **kwargs)


def create_summarize_chain(
    llm: Runnable[LanguageModelInput, BaseMessage],
    *,
    turn_tokens: int = 250,
    max_turns: int | None = None,
    mode: Mode = "map_reduce",
    kind: Kind = "abstractive",
    reduce_prompt: BasePromptTemplate | None = None,
    summary_tokens: int = 256,
    context_window: int | None = None,
) -> SummarizeChain:
    """A Runnable that summarizes a long text or transcript with prompts that all fit.

    Args:
        llm: any LangChain chat model, or one wrapped by ``bind``, ``with_config``,
            ``with_retry`` or ``with_fallbacks`` (the chain calls the wrapper, and counts
            through the models inside; with fallbacks every prompt fits every model that may
            answer). This package's models count exactly.
        turn_tokens: the size of the turns the text is split into.
        max_turns: refuse (``InvalidInputError``, before any call) a text longer than this.
        mode: ``"map_reduce"`` (groups summarized in one batch, then reduced) or ``"refine"``.
        kind: ``"abstractive"``, ``"extractive"`` (sentences copied) or ``"markdown"``.
        reduce_prompt: the prompt that merges partial summaries; it takes ``text``.
        summary_tokens: output tokens kept free for each summary (``max_tokens`` for this
            package's models).
        context_window: the window of a chat model from another package that declares none.

    Input: the text (or ``{"text": ...}``). Output: ``{"summary", "turns", "rounds"}``.
    """
    for name, value in (("turn_tokens", turn_tokens), ("summary_tokens", summary_tokens)):
        if not isinstance(value, int) or value <= 0:
            raise InvalidInputError(name, f"must be a positive integer; got {value!r}")
    if max_turns is not None and (not isinstance(max_turns, int) or max_turns <= 0):
        raise InvalidInputError(
            "max_turns", f"must be a positive integer or None; got {max_turns!r}"
        )
    if mode not in ("map_reduce", "refine"):
        raise InvalidInputError("mode", f"must be 'map_reduce' or 'refine'; got {mode!r}")
    if kind not in INSTRUCTIONS:
        raise InvalidInputError("kind", f"must be one of {sorted(INSTRUCTIONS)}; got {kind!r}")
    if reduce_prompt is not None and set(reduce_prompt.input_variables) != {"text"}:
        raise InvalidInputError(
            "reduce_prompt",
            "must take exactly one variable, 'text'; "
            f"takes {sorted(reduce_prompt.input_variables)}",
        )
    return SummarizeChain(
        llm,
        turn_tokens=turn_tokens,
        max_turns=max_turns,
        mode=mode,
        kind=kind,
        reduce_prompt=reduce_prompt or _prompt(kind, REDUCE_NOTE),
        summary_tokens=summary_tokens,
        context_window=context_window,
    )
