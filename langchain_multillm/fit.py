"""Token fit: does a prompt (plus the requested output) fit the model's limits?

The decision is a pure function of three numbers (the prompt's token count, the requested
``max_tokens`` and the model's :class:`Limits`); models supply the count. Two cheap bounds
decide first, and the exact count runs only when they straddle the limit:

* an **upper bound** may only prove that a prompt fits. For byte-level BPE tokenizers every
  token stands for at least one UTF-8 byte, except the special tokens a template or the
  tokenizer adds; so *bytes of the text + the template's own tokens* bounds the count from
  above. :class:`TemplateBound` measures the template's tokens once; :func:`chat_bound` adds
  the bytes.
* a **lower bound** may only prove that it does not: no token covers more bytes than the
  longest token of the vocabulary, so *bytes / longest token* bounds the count from below
  (:func:`lower_bound`). A 10 MB prompt is refused at once, without tokenizing it.

Between the two, the exact count decides; where the backend has no exact counter, the call is
sent and the backend's own overflow error comes back as ``ContextWindowExceededError``
(:func:`undecided`): a bound never refuses a prompt that may fit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from langchain_core.messages import AIMessage, BaseMessage

from langchain_multillm._request import Prompt
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError

__all__ = [
    "UNKNOWN_MAX_TOKEN_BYTES",
    "ContextOverflowPolicy",
    "Counted",
    "FitReport",
    "Limits",
    "TemplateBound",
    "decide",
    "enforce",
    "lower_bound",
    "undecided",
]

ContextOverflowPolicy = Literal["raise", "clamp", "ignore"]
# How ``FitReport.prompt_tokens`` was obtained: an exact count; a proven upper bound (which
# decided that the prompt fits); a proven lower bound (which decided that it does not); or a
# range the bounds left open with no exact count to settle it (the backend judges).
Counted = Literal["exact", "upper_bound", "lower_bound", "range"]
OVERFLOW_POLICIES: tuple[str, ...] = ("raise", "clamp", "ignore")


@dataclass(frozen=True)
class Limits:
    """A model's token limits; ``None`` where the backend sets no separate limit."""

    context_window: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    @property
    def known(self) -> bool:
        """Whether any limit is known."""
        return any(
            v is not None
            for v in (self.context_window, self.max_input_tokens, self.max_output_tokens)
        )


@dataclass(frozen=True)
class FitReport:
    """Whether a prompt fits, and by how much.

    ``prompt_tokens`` is exact when ``exact`` is true; otherwise ``counted`` says which proven
    bound it is: an ``upper_bound`` (never an under-count) when it decided that the prompt fits,
    a ``lower_bound`` (never an over-count) when it decided that it does not, or, for a
    ``range`` no exact count could settle, the upper end (``prompt_tokens_min`` the lower end):
    such a prompt is sent and the backend judges. ``room`` is the number of tokens left for the
    output.
    """

    fits: bool
    prompt_tokens: int
    exact: bool
    max_tokens: int | None
    max_tokens_effective: int | None
    context_window: int | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    room: int | None
    reason: str | None = None
    counted: Counted = "upper_bound"
    prompt_tokens_min: int | None = None

    def __str__(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        window = self.context_window if self.context_window is not None else "unknown"
        if self.counted == "range" and self.prompt_tokens_min is not None:
            tokens = f"{self.prompt_tokens_min}-{self.prompt_tokens} prompt tokens (range)"
        else:
            tokens = f"{self.prompt_tokens} prompt tokens ({self.counted.replace('_', ' ')})"
        text = (
            f"{verdict}: {tokens}, "
            f"max_tokens={self.max_tokens_effective}, window={window}, room={self.room}"
        )
        return f"{text}; {self.reason}" if self.reason else text


def decide(
    prompt_tokens: int,
    *,
    exact: bool,
    max_tokens: int | None,
    limits: Limits,
    counted: Counted | None = None,
) -> FitReport:
    """The fit report for a counted prompt against known limits.

    ``counted`` says what ``prompt_tokens`` is (default: ``exact`` or ``upper_bound``).
    """
    counted = counted or ("exact" if exact else "upper_bound")
    window, max_in, max_out = (
        limits.context_window,
        limits.max_input_tokens,
        limits.max_output_tokens,
    )
    if not limits.known:
        return FitReport(
            fits=True,
            prompt_tokens=prompt_tokens,
            exact=False,
            max_tokens=max_tokens,
            max_tokens_effective=max_tokens,
            context_window=None,
            max_input_tokens=None,
            max_output_tokens=None,
            room=None,
            reason="window unknown",
            counted=counted if counted != "exact" else "upper_bound",
        )
    room: int | None = None
    if window is not None:
        room = window - prompt_tokens
    if max_out is not None:
        room = max_out if room is None else min(room, max_out)
    reason: str | None = None
    tokens = {
        "upper_bound": f"{prompt_tokens} tokens (upper bound)",
        "lower_bound": f"at least {prompt_tokens} tokens",
    }.get(counted, f"{prompt_tokens} tokens")
    if max_in is not None and prompt_tokens > max_in:
        reason = f"prompt has {tokens}; max_input_tokens is {max_in}"
    elif max_tokens is not None and max_out is not None and max_tokens > max_out:
        reason = f"max_tokens={max_tokens} exceeds max_output_tokens={max_out}"
    elif window is not None:
        needed = prompt_tokens + (max_tokens if max_tokens is not None else 1)
        if needed > window:
            what = f" + max_tokens={max_tokens}" if max_tokens is not None else " + 1 output token"
            reason = f"prompt has {tokens}{what} = {needed} > context_window={window}"
    return FitReport(
        fits=reason is None,
        prompt_tokens=prompt_tokens,
        exact=exact,
        max_tokens=max_tokens,
        max_tokens_effective=max_tokens,
        context_window=window,
        max_input_tokens=max_in,
        max_output_tokens=max_out,
        room=room,
        reason=reason,
        counted=counted,
    )


def undecided(
    upper: int | None,
    lower: int | None,
    *,
    max_tokens: int | None,
    limits: Limits,
    clamp: bool,
) -> FitReport:
    """The report for a prompt the bounds could not decide and nothing could count exactly.

    It is sent, and the backend judges (its overflow error maps to
    ``ContextWindowExceededError``): a bound alone never refuses a prompt that may fit. With
    ``clamp``, ``max_tokens`` is lowered to the room the upper bound proves, or, where that
    proves none, to the most room the lower bound leaves.
    """
    hi = upper if upper is not None else lower
    report = decide(hi or 0, exact=False, max_tokens=max_tokens, limits=limits, counted="range")
    effective = max_tokens
    if clamp and limits.context_window is not None:
        sure = limits.context_window - hi if hi is not None else 0
        most = limits.context_window - (lower or 0)
        room = sure if sure > 0 else most
        if limits.max_output_tokens is not None:
            room = min(room, limits.max_output_tokens)
        if room > 0 and max_tokens is not None and max_tokens > room:
            effective = room
    low = f"{lower}" if lower is not None else "?"
    high = f"{upper}" if upper is not None else "?"
    return replace(
        report,
        fits=True,
        max_tokens_effective=effective,
        prompt_tokens_min=lower,
        reason=(
            f"between {low} and {high} prompt tokens and no exact count here: sent, the "
            "backend judges"
        ),
    )


def check_policy(policy: str) -> ContextOverflowPolicy:
    """Validate a ``context_overflow`` value."""
    if policy not in OVERFLOW_POLICIES:
        raise InvalidInputError(
            "context_overflow", f"must be one of {', '.join(OVERFLOW_POLICIES)}; got {policy!r}"
        )
    return policy  # type: ignore[return-value]


def enforce(report: FitReport, policy: ContextOverflowPolicy, *, backend: str | None) -> FitReport:
    """Apply the overflow policy to a report: raise, clamp ``max_tokens``, or let it pass.

    Returns the report the call goes ahead with (``max_tokens_effective`` shows a clamp).
    """
    if report.fits or policy == "ignore":
        return report
    prompt_fits = (
        report.max_input_tokens is None or report.prompt_tokens <= report.max_input_tokens
    ) and (report.context_window is None or report.prompt_tokens < report.context_window)
    if policy == "clamp" and prompt_fits and report.room is not None and report.room > 0:
        return replace(
            report,
            fits=True,
            max_tokens_effective=min(report.room, report.max_tokens or report.room),
            reason=f"max_tokens clamped from {report.max_tokens} to the {report.room} tokens left",
        )
    limit = report.context_window
    if report.max_input_tokens is not None and report.prompt_tokens > report.max_input_tokens:
        limit = report.max_input_tokens
    raise ContextWindowExceededError(
        f"the prompt does not fit the model: {report.reason}",
        prompt_tokens=report.prompt_tokens,
        max_tokens=report.max_tokens,
        limit=limit,
        fit=report,
        backend=backend,
    )


# Tokens a template may merge or split at each message boundary beyond what was measured.
SLACK_PER_MESSAGE = 2


@dataclass(frozen=True)
class TemplateBound:
    """Bounds a chat prompt's tokens by its UTF-8 bytes plus the template's own tokens.

    ``base`` is the exact count of a conversation of one empty user message (generation prompt,
    default system prompt and BOS included); ``per_role[r]`` the exact tokens one more empty
    message of role ``r`` adds. Measured once per model with the backend's own counter.
    """

    base: int
    per_role: dict[str, int]

    # The conversations measured: one empty user message, then one more message of each role.
    PROBES: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = (
        ("base", ("user",)),
        ("system", ("system", "user")),
        ("assistant", ("user", "assistant")),
        ("user", ("user", "assistant", "user")),
    )

    @classmethod
    def probes(cls) -> list[list[dict[str, str]]]:
        """The probe conversations, as OpenAI-style message dicts with empty content."""
        return [[{"role": r, "content": ""} for r in roles] for _, roles in cls.PROBES]

    @classmethod
    def from_counts(cls, counts: Sequence[int | None]) -> TemplateBound | None:
        """Build from the exact counts of :meth:`probes` (None where the template refused)."""
        got = {name: n for (name, _), n in zip(cls.PROBES, counts, strict=True) if n is not None}
        if "base" not in got:
            return None
        base = got["base"]
        per_role: dict[str, int] = {}
        if "system" in got:
            per_role["system"] = max(got["system"] - base, 0)
        if "assistant" in got:
            per_role["assistant"] = max(got["assistant"] - base, 0)
            if "user" in got:
                per_role["user"] = max(got["user"] - got["assistant"], 0)
        return cls(base=base, per_role=per_role)

    @classmethod
    def measure(cls, count: Callable[[list[dict[str, str]]], int]) -> TemplateBound | None:
        """Measure with ``count`` (message dicts in, exact tokens out)."""
        counts: list[int | None] = []
        for probe in cls.probes():
            try:
                counts.append(count(probe))
            except Exception:
                counts.append(None)
        return cls.from_counts(counts)

    @classmethod
    async def ameasure(
        cls, acount: Callable[[list[dict[str, str]]], Awaitable[int]]
    ) -> TemplateBound | None:
        """Async twin of :meth:`measure` (the probes run concurrently)."""
        import asyncio

        results = await asyncio.gather(*(acount(p) for p in cls.probes()), return_exceptions=True)
        return cls.from_counts([r if isinstance(r, int) else None for r in results])

    def bound(self, texts_by_role: Sequence[tuple[str, str]]) -> int | None:
        """Upper bound for messages given as (role, text); None if a role was not measured."""
        total = self.base
        for i, (role, text) in enumerate(texts_by_role):
            if i > 0:
                extra = self.per_role.get(role)
                if extra is None:
                    return None
                total += extra
            total += SLACK_PER_MESSAGE + len(text.encode("utf-8"))
        return total


# Allowance for a chat template that was never measured (a server that cannot tokenize):
# generous for the common templates (ChatML, Llama 3, Mistral, Gemma), with room for a
# default system prompt; tools are rendered by templates with instructions around their JSON.
UNMEASURED_BASE = 128
UNMEASURED_PER_MESSAGE = 16
UNMEASURED_TOOLS_FACTOR = 2
UNMEASURED_TOOLS_BASE = 512


def utf8_len(text: str) -> int:
    """UTF-8 bytes of ``text``: what a byte-level tokenizer's count cannot exceed."""
    return len(text.encode("utf-8"))


def chat_bound(
    prompt: Prompt, template: TemplateBound | None, measure: Callable[[str], int] = utf8_len
) -> int | None:
    """Upper bound for a :class:`~langchain_multillm._request.Prompt`; None to count exactly.

    Raw text: its bytes plus two (BOS/EOS). Messages: the measured template's bound, or, for a
    template never measured, the ``UNMEASURED_*`` allowances. Images and files: None.
    ``measure`` bounds one message's text (default: its bytes; a backend with the model's own
    tokenizer at hand passes its token count, the allowances covering the template).
    """
    if prompt.text is not None:
        return measure(prompt.text) + 2
    pairs: list[tuple[str, str]] = []
    for m in prompt.messages or []:
        if isinstance(m.content, list) and any(
            isinstance(b, dict) and b.get("type") not in (None, "text") for b in m.content
        ):
            return None
        role = ROLE_OF.get(m.type) or str(getattr(m, "role", m.type))
        pairs.append((role, "\n".join(text_of(m))))
    if template is not None and not prompt.tools:
        return template.bound(pairs)
    total = UNMEASURED_BASE + sum(UNMEASURED_PER_MESSAGE + measure(t) for _, t in pairs)
    measured = template.bound(pairs) if template is not None else None
    if measured is not None:  # a template's own tokens may exceed the unmeasured allowance
        total = max(total, measured)
    if prompt.tools:
        tools_bytes = len(json.dumps(prompt.tools).encode("utf-8"))
        total += UNMEASURED_TOOLS_BASE + UNMEASURED_TOOLS_FACTOR * tools_bytes
    return total


# The longest token assumed where the backend's vocabulary cannot be read (a remote server):
# twice the longest token of the widest vocabularies measured (cl100k_base, o200k_base and
# DeepSeek-V4's 129K vocabulary all top out at 128 bytes, a run of spaces). An assumption, not
# a proof: a vocabulary with longer tokens could see a prompt of more than 256 bytes per token
# refused; ``context_overflow="ignore"`` sends it anyway.
UNKNOWN_MAX_TOKEN_BYTES = 256


def lower_bound(prompt: Prompt, max_token_bytes: int) -> int:
    """A proven lower bound on a prompt's tokens: no token covers more than ``max_token_bytes``
    bytes, so the text the model surely sees needs at least ``ceil(bytes / max_token_bytes)``.

    Raw text counts whole. Of chat messages only what every template renders verbatim counts:
    the text of system, user and tool messages, stripped (templates may trim it); assistant
    turns (which templates may shorten, e.g. dropping reasoning) and tools count nothing. A
    tokenizer that shrinks text when normalizing it (NFKC) is out of this proof: such a
    backend gives a ``max_token_bytes`` that allows for it.
    """
    if prompt.text is not None:
        n = len(prompt.text.encode("utf-8"))
    else:
        n = sum(
            len("\n".join(text_of(m)).strip().encode("utf-8"))
            for m in prompt.messages or []
            if (ROLE_OF.get(m.type) or getattr(m, "role", m.type)) != "assistant"
        )
    return -(-n // max(max_token_bytes, 1))


ROLE_OF = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def text_of(message: BaseMessage) -> list[str]:
    """Every piece of text a message carries: content, and tool calls' names and arguments."""
    content = message.content
    out = [message.text if isinstance(content, list) else str(content)]
    calls = message.tool_calls if isinstance(message, AIMessage) and message.type == "ai" else []
    for tc in calls:
        out.append(tc["name"] + json.dumps(tc["args"]))
    return out
