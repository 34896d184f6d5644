"""Token fit: does a prompt (plus the requested output) fit the model's limits?

The decision is a pure function of three numbers (the prompt's token count, the requested
``max_tokens`` and the model's :class:`Limits`); models supply the count. They try a cheap,
proven upper bound first and count exactly only when the bound cannot decide, so a prompt far
from the limit costs a few microseconds to check.

For byte-level BPE tokenizers every token stands for at least one UTF-8 byte, except the
special tokens a template or the tokenizer adds; so *bytes of the text + the template's own
tokens* bounds the count from above. :class:`TemplateBound` measures the template's tokens
once; :func:`chat_bound` adds the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError

__all__ = [
    "ContextOverflowPolicy",
    "FitReport",
    "Limits",
    "TemplateBound",
    "decide",
    "enforce",
]

ContextOverflowPolicy = Literal["raise", "clamp", "ignore"]
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

    ``prompt_tokens`` is exact when ``exact`` is true; otherwise it is a proven upper bound,
    never an under-count. ``room`` is the number of tokens left for the output.
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

    def __str__(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        kind = "exact" if self.exact else "upper bound"
        window = self.context_window if self.context_window is not None else "unknown"
        text = (
            f"{verdict}: {self.prompt_tokens} prompt tokens ({kind}), "
            f"max_tokens={self.max_tokens_effective}, window={window}, room={self.room}"
        )
        return f"{text}; {self.reason}" if self.reason else text


def decide(
    prompt_tokens: int,
    *,
    exact: bool,
    max_tokens: int | None,
    limits: Limits,
) -> FitReport:
    """The fit report for a counted prompt against known limits."""
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
        )
    room: int | None = None
    if window is not None:
        room = window - prompt_tokens
    if max_out is not None:
        room = max_out if room is None else min(room, max_out)
    reason: str | None = None
    kind = "" if exact else " (upper bound)"
    if max_in is not None and prompt_tokens > max_in:
        reason = f"prompt has {prompt_tokens} tokens{kind}; max_input_tokens is {max_in}"
    elif max_tokens is not None and max_out is not None and max_tokens > max_out:
        reason = f"max_tokens={max_tokens} exceeds max_output_tokens={max_out}"
    elif window is not None:
        needed = prompt_tokens + (max_tokens if max_tokens is not None else 1)
        if needed > window:
            what = f" + max_tokens={max_tokens}" if max_tokens is not None else " + 1 output token"
            reason = (
                f"prompt has {prompt_tokens} tokens{kind}{what} = {needed} > "
                f"context_window={window}"
            )
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


def chat_bound(prompt: Any, template: TemplateBound | None) -> int | None:
    """Upper bound for a :class:`~langchain_multillm._base.Prompt`; None to count exactly.

    Raw text: its bytes plus two (BOS/EOS). Messages: the measured template's bound, or, for a
    template never measured, the ``UNMEASURED_*`` allowances. Images and files: None.
    """
    if prompt.text is not None:
        return len(prompt.text.encode("utf-8")) + 2
    pairs: list[tuple[str, str]] = []
    for m in prompt.messages or []:
        if isinstance(m.content, list) and any(
            isinstance(b, dict) and b.get("type") not in (None, "text") for b in m.content
        ):
            return None
        role = ROLE_OF.get(m.type) or getattr(m, "role", m.type)
        pairs.append((role, "\n".join(text_of(m))))
    if template is not None and not prompt.tools:
        return template.bound(pairs)
    total = UNMEASURED_BASE + sum(UNMEASURED_PER_MESSAGE + len(t.encode("utf-8")) for _, t in pairs)
    measured = template.bound(pairs) if template is not None else None
    if measured is not None:  # a template's own tokens may exceed the unmeasured allowance
        total = max(total, measured)
    if prompt.tools:
        tools_bytes = len(json.dumps(prompt.tools).encode("utf-8"))
        total += UNMEASURED_TOOLS_BASE + UNMEASURED_TOOLS_FACTOR * tools_bytes
    return total


ROLE_OF = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def text_of(message: Any) -> list[str]:
    """Every piece of text a message carries: content, and tool calls' names and arguments."""
    content = message.content
    out = [message.text if isinstance(content, list) else str(content)]
    for tc in message.tool_calls if message.type == "ai" else ():
        out.append(tc["name"] + json.dumps(tc["args"]))
    return out
