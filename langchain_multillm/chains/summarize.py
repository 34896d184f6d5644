"""``create_summarize_chain``: long texts and transcripts summarized by prompts that all fit.

The text is split into turns of about ``turn_tokens`` tokens, at speaker turns for a
transcript and at sentence ends otherwise. ``map_reduce`` summarizes the turns in groups that
fit the model's window (one batch, so engines that batch run them together), then reduces the
summaries the same way until one is left; ``refine`` carries one summary through the groups in
order. ``turns`` (:class:`TurnSummarizer`, :func:`summarize_turns`) is the replaced LinTO
gateway's summary: a transcript's lines as speaker turns, batches in order carrying the last
summary lines forward (``fields: 2``) or in parallel (``fields: 1``), reduce rounds, speaker
lines consolidated. Every prompt is counted with the model's own tokenizer (a conservative
estimate for chat models of other packages) and checked before it is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import re
import string
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast, overload

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains._text import merge, pieces_within, split_sentences, split_speakers
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError

__all__ = [
    "SummarizeChain",
    "SummaryReduceError",
    "TurnOptions",
    "TurnResult",
    "TurnSummarizer",
    "consolidate_turns",
    "create_summarize_chain",
    "split_turns",
    "summarize_turns",
]

T = TypeVar("T")

Mode = Literal["map_reduce", "refine"]
AnyMode = Literal["map_reduce", "refine", "turns"]
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


# ====================================================================== mode="turns"
# The replaced gateway's summaries (LinTO llm-gateway): a transcript's lines as speaker turns,
# summarized batch after batch with the last lines carried forward (fields: 2) or in parallel
# batches (fields: 1), then reduced and consolidated. Counts are the model's own, exact; every
# prompt is checked by the fit contract before it is sent.

# "Speaker: text", "[00:01] Speaker : text", "Dr. Smith: text": a label of at most 40
# characters with a letter in it, then a colon and a space (a time "10:30" or a URL is no label).
_TURN_SPEAKER = re.compile(
    r"^[ \t]*(?P<label>(?:\[[^\]\n]{1,20}\][ \t]*)?[^\W_][\w .'’()-]{0,39}?)[ \t]*:[ \t]+(?=\S)"
)

# The most reduce rounds before giving up (each round must shrink the text anyway).
MAX_REDUCE_ROUNDS = 16

TURN_TEMPLATES: dict[int, str] = {
    1: "{instructions}\n\n{text}",
    2: (
        "{instructions}\n\nThe summary so far ends with:\n{summary}\n\n"
        "Summarize what follows, going on from it:\n{text}"
    ),
}

REDUCE_TEMPLATE = (
    "{instructions} The text is a set of partial summaries of one longer text, in order: "
    "merge them into one, shorter.\n\n{text}"
)

Progress = Callable[[int, int], Awaitable[None] | None]
"""``progress(done, total)``: ``done`` of ``total`` turns summarized (a reduce counts as one
more step); a coroutine function is awaited. An exception it raises stops the summary."""

Guard = Callable[[Coroutine[Any, Any, BaseMessage]], Awaitable[BaseMessage]]
"""Awaits one model call (``guard(coro)``): a job runner's own way to run it (a concurrency
slot, abandoning the call when the job is cancelled)."""


class SummaryReduceError(ContextWindowExceededError):
    """A reduce round could not shrink the summary enough to fit one prompt."""


def speaker_of(line: str) -> tuple[str | None, str]:
    """``(label, text)`` of a ``"Speaker: text"`` line; ``(None, line)`` when it has no label."""
    m = _TURN_SPEAKER.match(line)
    if m is None or not any(c.isalpha() for c in m.group("label")):
        return None, line.strip()
    return m.group("label").strip(), line[m.end() :].strip()


def consolidate_turns(lines: Sequence[str]) -> list[str]:
    """Consecutive lines of the same speaker merged into one (``"A: x"``, ``"A: y"`` ->
    ``"A: x y"``); a line without a speaker label is kept as it is and ends the run."""
    out: list[str] = []
    current: tuple[str, list[str]] | None = None
    for line in lines:
        if not line.strip():
            continue
        label, text = speaker_of(line)
        if label is not None and current is not None and current[0] == label:
            current[1].append(text)
            continue
        if current is not None:
            out.append(f"{current[0]}: {' '.join(current[1])}")
            current = None
        if label is None:
            out.append(line.strip())
        else:
            current = (label, [text])
    if current is not None:
        out.append(f"{current[0]}: {' '.join(current[1])}")
    return out


def _longest_prefix(prefix: str, text: str, cap: int, count: Callable[[str], int]) -> int:
    """The most characters of ``text`` that ``prefix`` + they stay within ``cap`` tokens (at a
    space where one is near the end); at least 1, so a caller cutting ``text`` always ends."""
    lo, hi = 1, len(text)
    while lo < hi:  # the largest n with count(prefix + text[:n]) <= cap
        mid = (lo + hi + 1) // 2
        if count(prefix + text[:mid].rstrip()) <= cap:
            lo = mid
        else:
            hi = mid - 1
    space = text.rfind(" ", 0, lo + 1)
    if lo < len(text) and space > lo // 2 and count(prefix + text[:space].rstrip()) <= cap:
        return space
    return lo


def split_turns(text: str, cap: int, count: Callable[[str], int]) -> list[str]:
    """``text``'s lines as turns of at most ``cap`` tokens (by ``count``), as that gateway cut
    them: each non-empty line is a turn; a line without a label is the last speaker's; a turn
    over ``cap`` is cut at sentences, a sentence still over ``cap`` at the longest piece that
    fits (a word boundary where near), each piece under the speaker's label."""
    turns: list[str] = []
    speaker: str | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        label, content = speaker_of(raw)
        speaker = label or speaker
        prefix = f"{speaker}: " if speaker else ""
        line = prefix + content
        if count(line) <= cap:
            turns.append(line)
            continue
        if count(prefix + content[:1]) > cap:
            raise InvalidInputError(
                "createNewTurnAfter",
                f"{cap} tokens cannot hold the speaker label {prefix!r} and any text",
            )
        current = ""
        for sentence in split_sentences(content):
            joined = f"{current} {sentence}" if current else sentence
            if count(prefix + joined) <= cap:
                current = joined
                continue
            if current:
                turns.append(prefix + current)
            rest = sentence
            while count(prefix + rest) > cap:  # a sentence over cap: cut it, never looping
                n = _longest_prefix(prefix, rest, cap, count)
                piece, rest = rest[:n].rstrip(), rest[n:].lstrip()
                if count(prefix + piece) > cap:  # one character over cap (a long label)
                    raise InvalidInputError(
                        "createNewTurnAfter",
                        f"{cap} tokens cannot hold the speaker label {prefix!r} and "
                        f"the character {piece[:1]!r}",
                    )
                if piece:
                    turns.append(prefix + piece)
            current = rest
        if current:
            turns.append(prefix + current)
    return turns


class _Template:
    """A gateway prompt template: ``{}`` placeholders in order (the previous summary, then
    the new turns, when it has two) or named ``{summary}`` / ``{text}``."""

    def __init__(self, text: str, fields: int, name: str, extra: dict[str, str]) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(name, f"must be a non-empty string; got {text!r:.80}")
        try:
            found = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:
            raise InvalidInputError(
                name, f"is not a valid template ({exc}); write literal braces as {{{{ }}}}"
            ) from exc
        names = ["summary", "text"] if fields == 2 else ["text"]
        self.text, self.extra, self.fields = text, extra, fields
        self.positional = bool(found) and all(f == "" or f.isdigit() for f in found)
        if self.positional:
            auto = [f for f in found if f == ""]
            indices = sorted({int(f) for f in found if f})
            n = len(auto) if auto else len(indices)
            mixed = bool(auto) and len(auto) != len(found)
            if mixed or n != fields or (not auto and indices != list(range(n))):
                raise InvalidInputError(
                    name,
                    f"must have {fields} '{{}}' placeholder{'s' if fields == 2 else ''} "
                    f"({' then '.join(names)}) for fields: {fields}; found {len(found)}",
                )
        elif set(found) - set(extra) != set(names):
            raise InvalidInputError(
                name,
                f"must take {' and '.join('{' + n + '}' for n in names)} for fields: {fields} "
                f"(or {fields} '{{}}' placeholders); takes {sorted(set(found))}",
            )

    def fill(self, text: str, summary: str = "") -> list[BaseMessage]:
        """The prompt as one user message, as that gateway sent it."""
        if self.positional:
            args = (summary, text) if self.fields == 2 else (text,)
            filled = self.text.format(*args)
        else:
            filled = self.text.format(text=text, summary=summary, **self.extra)
        return [HumanMessage(filled)]


@dataclass(frozen=True)
class TurnOptions:
    """A summary flavor's settings (the replaced gateway's names in ``from_flavor``)."""

    create_new_turn_after: int = 250
    """``createNewTurnAfter``: a turn over this many tokens is cut at sentences."""
    summary_turns: int = 3
    """``summaryTurns``: lines of the summary so far carried into the next prompt (fields 2)."""
    max_new_turns: int = 9
    """``maxNewTurns``: the most turns in one prompt (fewer where the window is full)."""
    max_generation_length: int = 256
    """``maxGenerationLength``: output tokens kept free in every prompt (its ``max_tokens``)."""
    total_context_length: int | None = None
    """``totalContextLength``: a window to stay within; it can only lower the model's own."""
    fields: int = 1
    """The template's placeholders: 2 (summary so far, new turns: batches in order) or 1
    (new turns: batches in parallel, joined)."""
    reduce_summary: bool = False
    """``reduceSummary``: reduce the joined summary with ``reduce_prompt`` (as many rounds as
    it takes)."""
    reduce_prompt: str | None = None
    """The reduce template's text (one ``{}`` or ``{text}``); None: one per ``type``."""
    consolidate_summary: bool = False
    """``consolidateSummary``: merge consecutive lines of the same speaker."""
    type: Kind = "abstractive"
    """``type``: abstractive | extractive | markdown (the default templates' instructions;
    markdown keeps each batch's blank lines and joins batches by a blank line)."""
    temperature: float | None = None
    """Sampling ``temperature`` sent with each call (None: the model's own)."""
    top_p: float | None = None
    """Sampling ``top_p`` sent with each call (None: the model's own)."""
    concurrency: int = 4
    """Batches in flight at once with ``fields: 1``."""

    FLAVOR_KEYS: ClassVar[dict[str, str]] = {
        "createNewTurnAfter": "create_new_turn_after",
        "summaryTurns": "summary_turns",
        "maxNewTurns": "max_new_turns",
        "maxGenerationLength": "max_generation_length",
        "totalContextLength": "total_context_length",
        "reduceSummary": "reduce_summary",
        "consolidateSummary": "consolidate_summary",
        "type": "type",
        "temperature": "temperature",
        "top_p": "top_p",
    }

    def __post_init__(self) -> None:
        names = {v: k for k, v in self.FLAVOR_KEYS.items()}
        for attr, low in (
            ("create_new_turn_after", 1),
            ("summary_turns", 0),
            ("max_new_turns", 1),
            ("max_generation_length", 1),
            ("concurrency", 1),
        ):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(
                    names.get(attr, attr), f"must be an integer >= {low}; got {value!r}"
                )
        total = self.total_context_length
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total <= 0
        ):
            raise InvalidInputError("totalContextLength", f"must be > 0 or unset; got {total!r}")
        if self.fields not in (1, 2) or isinstance(self.fields, bool):
            raise InvalidInputError("fields", f"must be 1 or 2; got {self.fields!r}")
        if self.type not in INSTRUCTIONS:
            raise InvalidInputError(
                "type", f"must be one of {sorted(INSTRUCTIONS)}; got {self.type!r}"
            )
        for attr in ("reduce_summary", "consolidate_summary"):
            if not isinstance(getattr(self, attr), bool):
                raise InvalidInputError(
                    names[attr], f"must be true or false; got {getattr(self, attr)!r}"
                )
        t, p = self.temperature, self.top_p
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2
        ):
            raise InvalidInputError("temperature", f"must be a number in [0, 2]; got {t!r}")
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1
        ):
            raise InvalidInputError("top_p", f"must be a number in (0, 1]; got {p!r}")

    @classmethod
    def from_flavor(
        cls,
        flavor: Mapping[str, Any],
        *,
        fields: int = 1,
        reduce_prompt: str | None = None,
        concurrency: int = 4,
    ) -> TurnOptions:
        """The options of a flavor in the replaced gateway's shape (``createNewTurnAfter``,
        ``summaryTurns``, ...). ``fields`` is the service's; ``reduce_prompt`` is the text of
        the file the flavor's ``reduce_prompt`` names (the caller reads it). The flavor's other
        keys (``name``, ``modelName``, ``tokenizerClass``, ``reduce_prompt``...) are not read."""
        values = {
            attr: flavor[key]
            for key, attr in cls.FLAVOR_KEYS.items()
            if flavor.get(key) is not None
        }
        return cls(fields=fields, reduce_prompt=reduce_prompt, concurrency=concurrency, **values)


@dataclass
class TurnResult:
    """What a turn summary gives: the text and how it was made."""

    summary: str
    turns: int
    batches: int
    rounds: int
    calls: int

    def as_dict(self) -> dict[str, Any]:
        """``{"summary", "turns", "batches", "rounds", "calls"}``."""
        return {
            "summary": self.summary,
            "turns": self.turns,
            "batches": self.batches,
            "rounds": self.rounds,
            "calls": self.calls,
        }


async def _await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _Run:
    """One summary's state: calls counted, progress reported."""

    def __init__(
        self, config: RunnableConfig, progress: Progress | None, guard: Guard | None
    ) -> None:
        self.config = config
        self.progress = progress
        self.guard = guard
        self.calls = 0
        self.done = 0
        self.total = 0

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread: counting may be slow or ask a server, and the
        event loop (a gateway's, running jobs inline) must not wait on it."""
        return cast(T, await run_in_executor(self.config, fn, *args))

    async def report(self, done: int) -> None:
        self.done = done
        if self.progress is not None:
            await _await(self.progress(done, self.total))
        if self.config.get("callbacks") is not None:
            await adispatch_custom_event(
                "summarize_progress", {"done": done, "total": self.total}, config=self.config
            )


class TurnSummarizer(Runnable[Any, dict[str, Any]]):
    """The replaced gateway's summaries on the fit contract; see :func:`create_summarize_chain`
    with ``mode="turns"``, and :meth:`asummarize`."""

    def __init__(
        self,
        llm: Runnable[LanguageModelInput, BaseMessage],
        template: str | None = None,
        options: TurnOptions | None = None,
    ) -> None:
        self.llm = llm
        self.options = opts = options or TurnOptions()
        instructions = {"instructions": INSTRUCTIONS[opts.type]}
        self.template = _Template(
            template if template is not None else TURN_TEMPLATES[opts.fields],
            opts.fields,
            "template",
            {} if template is not None else instructions,
        )
        self.reduce_template = _Template(
            opts.reduce_prompt if opts.reduce_prompt is not None else REDUCE_TEMPLATE,
            1,
            "reduce_prompt",
            {} if opts.reduce_prompt is not None else instructions,
        )
        self.budget = self._budget(llm, opts)
        # a text's count, asked once (a remote model's counts are requests)
        self.count_text: Callable[[str], int] = functools.lru_cache(maxsize=8192)(self.budget.text)
        self.name = "TurnSummarizer"
        self.check()

    @staticmethod
    def _budget(llm: Runnable[Any, Any], opts: TurnOptions) -> Budget:
        own = Budget(llm).limits().context_window
        total = opts.total_context_length
        if total is None and own is None:
            raise InvalidInputError(
                "totalContextLength",
                "the model declares no context window; give totalContextLength",
            )
        window = min(w for w in (own, total) if w is not None)
        return Budget(llm, window)

    # ---- limits ----
    @property
    def window(self) -> int:
        """The window every prompt and its output stay within."""
        return cast(int, self.budget.context_window)

    @property
    def room(self) -> int:
        """Prompt tokens left with ``maxGenerationLength`` kept for the output."""
        room = self.budget.room(self.options.max_generation_length)
        return room if room is not None else self.window - self.options.max_generation_length

    def check(self) -> None:
        """Refuse (``InvalidInputError``, no call made) a flavor whose window cannot hold the
        template, one turn of ``createNewTurnAfter`` tokens and ``maxGenerationLength``."""
        opts = self.options
        limits = self.budget.limits()
        if (
            limits.max_output_tokens is not None
            and opts.max_generation_length > limits.max_output_tokens
        ):
            raise InvalidInputError(
                "maxGenerationLength",
                f"{opts.max_generation_length} is over the model's max_output_tokens "
                f"({limits.max_output_tokens})",
            )
        base = self.budget.count(self.template.fill(""))
        need = base + opts.create_new_turn_after
        if need > self.room:
            raise InvalidInputError(
                "createNewTurnAfter",
                f"the window ({self.window} tokens) cannot hold the template ({base} tokens), one "
                f"turn of createNewTurnAfter={opts.create_new_turn_after} tokens and "
                f"maxGenerationLength={opts.max_generation_length}; lower createNewTurnAfter or "
                f"maxGenerationLength (at most {max(self.room - base, 0)} tokens of turns fit)",
            )

    # ---- turns and batches ----
    def split(self, text: str) -> list[str]:
        """``text``'s lines as speaker turns of at most ``createNewTurnAfter`` tokens."""
        return split_turns(text, self.options.create_new_turn_after, self.count_text)

    def _fits(self, messages: list[BaseMessage]) -> bool:
        return self.budget.fit(messages, self.options.max_generation_length).fits

    def _batch(
        self,
        template: _Template,
        items: Sequence[str],
        sizes: Sequence[int],
        start: int,
        carry: list[str],
        limit: int | None,
    ) -> tuple[int, list[str], list[BaseMessage]]:
        """The most items from ``start`` (at most ``limit``) that fit one prompt with ``carry``
        (its oldest lines dropped only if one item does not fit with it): ``(n, carry,
        messages)``; an item that fits no prompt raises, so a caller always moves on."""
        room = self.room
        used = self.budget.count(template.fill("", "\n".join(carry)))
        n = 0
        while start + n < len(items) and (limit is None or n < limit):
            size = sizes[start + n] + 1  # its text and the line break before it
            if n and used + size > room:
                break
            used += size
            n += 1
        while True:  # the estimate is checked exactly: the sum of counts is not the count
            messages = template.fill("\n".join(items[start : start + n]), "\n".join(carry))
            if self._fits(messages):
                return n, carry, messages
            if n > 1:
                n -= 1
            elif carry:
                carry = carry[1:]
            else:
                report = self.budget.fit(messages, self.options.max_generation_length)
                raise ContextWindowExceededError(
                    f"one turn does not fit a prompt: {report}; lower createNewTurnAfter or "
                    "maxGenerationLength",
                    prompt_tokens=report.prompt_tokens,
                    max_tokens=self.options.max_generation_length,
                    fit=report,
                    backend="summarize",
                )

    def _batches(
        self, template: _Template, items: Sequence[str], limit: int | None
    ) -> list[tuple[int, list[BaseMessage]]]:
        sizes = [self.count_text(t) for t in items]
        out, start = [], 0
        while start < len(items):
            n, _, messages = self._batch(template, items, sizes, start, [], limit)
            out.append((n, messages))
            start += n
        return out

    # ---- calls ----
    async def _call(self, messages: list[BaseMessage], run: _Run) -> str:
        opts = self.options
        kwargs: dict[str, Any] = {}
        if self.budget.sends_max_tokens:
            kwargs["max_tokens"] = opts.max_generation_length
        if opts.temperature is not None:
            kwargs["temperature"] = opts.temperature
        if opts.top_p is not None:
            kwargs["top_p"] = opts.top_p
        coro = self.llm.ainvoke(messages, run.config, **kwargs)
        message = await (run.guard(coro) if run.guard is not None else coro)
        run.calls += 1
        return message.text

    def _lines(self, answer: str) -> list[str]:
        if self.options.type == "markdown":
            return answer.strip("\n").splitlines()
        return [line for line in answer.splitlines() if line.strip()]

    def _join(self, blocks: Sequence[list[str]]) -> str:
        if self.options.type == "markdown":
            return "\n\n".join("\n".join(b) for b in blocks if b)
        return "\n".join(line for b in blocks for line in b)

    async def _in_order(self, turns: list[str], run: _Run) -> tuple[list[list[str]], int]:
        """fields 2: batch after batch, the last ``summaryTurns`` lines carried forward."""
        opts = self.options
        sizes = await run.off_loop(lambda: [self.count_text(t) for t in turns])
        blocks: list[list[str]] = []
        start = batches = 0
        while start < len(turns):
            lines = [x for b in blocks for x in b if x.strip()]
            carry = lines[-opts.summary_turns :] if opts.summary_turns else []
            n, _, messages = await run.off_loop(
                self._batch, self.template, turns, sizes, start, carry, opts.max_new_turns
            )
            blocks.append(self._lines(await self._call(messages, run)))
            start += n
            batches += 1
            await run.report(start)
        return blocks, batches

    async def _parallel(
        self, batches: list[tuple[int, list[BaseMessage]]], run: _Run, progress: bool
    ) -> list[list[str]]:
        """``batches`` summarized at most ``concurrency`` at a time, answers in their order."""
        gate = asyncio.Semaphore(self.options.concurrency)

        async def one(n: int, messages: list[BaseMessage]) -> list[str]:
            async with gate:  # held for the call itself
                answer = await self._call(messages, run)
            if progress:
                await run.report(run.done + n)
            return self._lines(answer)

        # gather, not a TaskGroup: the first error is raised as it is (not in a group), the
        # other calls are cancelled
        tasks = [asyncio.ensure_future(one(n, m)) for n, m in batches]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _reduce_batches(
        self, template: _Template, text: str
    ) -> list[tuple[int, list[BaseMessage]]]:
        """``text``'s lines (a line too long for a prompt cut) in prompts of ``template``."""
        lines = [x for x in text.splitlines() if x.strip()]
        cap = max(self.room - self.budget.count(template.fill("")) - 2, 1)
        items = [p for x in lines for p in split_turns(x, cap, self.count_text)]
        return self._batches(template, items, None)

    async def _reduce(self, text: str, run: _Run) -> tuple[str, int]:
        """``text`` reduced with the reduce template, round after round, until one prompt
        holds it all; a round that does not shrink it raises :class:`SummaryReduceError`."""
        template = self.reduce_template
        for rounds in range(1, MAX_REDUCE_ROUNDS + 1):
            batches = await run.off_loop(self._reduce_batches, template, text)
            if len(batches) == 1:
                answer = await self._call(batches[0][1], run)
                return self._join([self._lines(answer)]), rounds
            shorter = self._join(await self._parallel(batches, run, False))
            before = await run.off_loop(self.count_text, text)
            after = await run.off_loop(self.count_text, shorter)
            if after >= before:
                raise SummaryReduceError(
                    f"reduce round {rounds} did not shrink the summary ({before} -> {after} "
                    f"tokens), which needs {len(batches)} prompts of at most {self.room} tokens; "
                    "lower maxGenerationLength or use a reduce prompt that asks for less",
                    prompt_tokens=before,
                    max_tokens=self.options.max_generation_length,
                    limit=self.room,
                    backend="summarize",
                )
            text = shorter
        raise SummaryReduceError(
            f"the summary still needs several prompts after {MAX_REDUCE_ROUNDS} reduce rounds",
            max_tokens=self.options.max_generation_length,
            limit=self.room,
            backend="summarize",
        )

    async def asummarize(
        self,
        text: str,
        *,
        progress: Progress | None = None,
        guard: Guard | None = None,
        config: RunnableConfig | None = None,
    ) -> TurnResult:
        """Summarize ``text``: turns, batches (in order or in parallel), reduce, consolidate.

        ``progress(done, total)`` is called after each batch (``done`` of ``total`` turns; a
        reduce is one more step); raising from it stops the summary. Cancelling the task that
        awaits this abandons the call in flight. ``guard`` awaits each call (a job runner's
        slot and cancellation). ``config`` is passed to every call (callbacks, tags); the
        summary is one chain run, progress goes to its callbacks as ``summarize_progress``.
        """

        async def run(
            value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
        ) -> dict[str, Any]:  # the names LangChain passes by
            return (await self._asummarize(value, progress, guard, config)).as_dict()

        out = await self._acall_with_config(run, text, config)
        return TurnResult(**out)

    async def _asummarize(
        self, text: Any, progress: Progress | None, guard: Guard | None, config: RunnableConfig
    ) -> TurnResult:
        if isinstance(text, dict):
            text = text.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("text", f"must be a non-empty string; got {text!r:.80}")
        opts = self.options
        run = _Run(config, progress, guard)
        turns = await run.off_loop(self.split, text)
        run.total = len(turns) + (1 if opts.reduce_summary else 0)
        if opts.fields == 2:
            blocks, batches = await self._in_order(turns, run)
        else:
            planned = await run.off_loop(self._batches, self.template, turns, opts.max_new_turns)
            blocks = await self._parallel(planned, run, True)
            batches = len(blocks)
        summary, rounds = self._join(blocks), 0
        if opts.reduce_summary and summary.strip():
            summary, rounds = await self._reduce(summary, run)
            await run.report(run.total)
        if opts.consolidate_summary:
            summary = "\n".join(consolidate_turns(summary.splitlines()))
        return TurnResult(summary.strip(), len(turns), batches, rounds, run.calls)

    def summarize(
        self, text: str, *, progress: Progress | None = None, config: RunnableConfig | None = None
    ) -> TurnResult:
        """Sync twin of :meth:`asummarize` (run on an event loop of its own)."""
        return _run_sync(self.asummarize(text, progress=progress, config=config))

    # ---- the Runnable ----
    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        return (await self._asummarize(value, None, None, config)).as_dict()

    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        return _run_sync(self._asummarize(value, None, None, config)).as_dict()

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """``{"summary", "turns", "batches", "rounds", "calls"}`` for a text (or
        ``{"text": ...}``); progress goes to callbacks as ``summarize_progress`` events."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Async twin of :meth:`invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` run to its end from sync code (in a thread of its own under a running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def summarize_turns(
    llm: Runnable[LanguageModelInput, BaseMessage],
    text: str,
    template: str | None = None,
    options: TurnOptions | None = None,
    progress: Progress | None = None,
    *,
    guard: Guard | None = None,
    config: RunnableConfig | None = None,
) -> str:
    """The summary of ``text`` as the replaced gateway made it (see :class:`TurnSummarizer`)."""
    chain = TurnSummarizer(llm, template, options)
    result = await chain.asummarize(text, progress=progress, guard=guard, config=config)
    return result.summary


@overload
def create_summarize_chain(
    llm: Runnable[LanguageModelInput, BaseMessage],
    *,
    mode: Literal["turns"],
    template: str | None = None,
    options: TurnOptions | None = None,
    turn_tokens: int = 250,
    max_turns: int | None = None,
    kind: Kind = "abstractive",
    reduce_prompt: BasePromptTemplate | None = None,
    summary_tokens: int = 256,
    context_window: int | None = None,
) -> TurnSummarizer: ...


@overload
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
) -> SummarizeChain: ...


def create_summarize_chain(
    llm: Runnable[LanguageModelInput, BaseMessage],
    *,
    turn_tokens: int = 250,
    max_turns: int | None = None,
    mode: AnyMode = "map_reduce",
    kind: Kind = "abstractive",
    reduce_prompt: BasePromptTemplate | None = None,
    summary_tokens: int = 256,
    context_window: int | None = None,
    template: str | None = None,
    options: TurnOptions | None = None,
) -> SummarizeChain | TurnSummarizer:
    """A Runnable that summarizes a long text or transcript with prompts that all fit.

    Args:
        llm: any LangChain chat model, or one wrapped by ``bind``, ``with_config``,
            ``with_retry`` or ``with_fallbacks`` (the chain calls the wrapper, and counts
            through the models inside; with fallbacks every prompt fits every model that may
            answer). This package's models count exactly.
        turn_tokens: the size of the turns the text is split into.
        max_turns: refuse (``InvalidInputError``, before any call) a text longer than this.
        mode: ``"map_reduce"`` (groups summarized in one batch, then reduced), ``"refine"``,
            or ``"turns"`` (the replaced gateway's summaries: a :class:`TurnSummarizer` built
            from ``template`` and ``options``).
        kind: ``"abstractive"``, ``"extractive"`` (sentences copied) or ``"markdown"``.
        reduce_prompt: the prompt that merges partial summaries; it takes ``text``.
        summary_tokens: output tokens kept free for each summary (``max_tokens`` for this
            package's models).
        context_window: the window of a chat model from another package that declares none.
        template: ``mode="turns"``: the prompt template as text, ``{}`` placeholders or named
            ``{summary}``/``{text}`` (None: one per ``kind`` and ``options.fields``).
        options: ``mode="turns"``: a flavor's settings; when None, they are made from
            ``turn_tokens`` (createNewTurnAfter), ``summary_tokens`` (maxGenerationLength),
            ``kind`` (type) and ``context_window`` (totalContextLength).

    Input: the text (or ``{"text": ...}``). Output: ``{"summary", "turns", "rounds"}`` (and
    ``"batches"``, ``"calls"`` for ``mode="turns"``).
    """
    for name, value in (("turn_tokens", turn_tokens), ("summary_tokens", summary_tokens)):
        if not isinstance(value, int) or value <= 0:
            raise InvalidInputError(name, f"must be a positive integer; got {value!r}")
    if max_turns is not None and (not isinstance(max_turns, int) or max_turns <= 0):
        raise InvalidInputError(
            "max_turns", f"must be a positive integer or None; got {max_turns!r}"
        )
    if mode not in ("map_reduce", "refine", "turns"):
        raise InvalidInputError("mode", f"must be 'map_reduce', 'refine' or 'turns'; got {mode!r}")
    if kind not in INSTRUCTIONS:
        raise InvalidInputError("kind", f"must be one of {sorted(INSTRUCTIONS)}; got {kind!r}")
    if mode == "turns":
        if reduce_prompt is not None or max_turns is not None:
            field = "reduce_prompt" if reduce_prompt is not None else "max_turns"
            raise InvalidInputError(
                field,
                "not taken with mode='turns' (give the reduce template as text in "
                "TurnOptions.reduce_prompt; batches hold at most TurnOptions.max_new_turns)",
            )
        if options is None:
            options = TurnOptions(
                create_new_turn_after=turn_tokens,
                max_generation_length=summary_tokens,
                type=kind,
                total_context_length=context_window,
            )
        elif not isinstance(options, TurnOptions):
            raise InvalidInputError(
                "options", f"must be a TurnOptions; got {type(options).__name__}"
            )
        return TurnSummarizer(llm, template, options)
    if template is not None or options is not None:
        raise InvalidInputError(
            "template" if template is not None else "options",
            f"taken only with mode='turns'; mode is {mode!r}",
        )
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
