"""Token budgets for chains: counts and limits through the fit contract, for any chat model.

A model of this package counts with its backend's own tokenizer and knows its limits. Any
other LangChain chat model gets a conservative estimate that never under-counts for byte-level
BPE and SentencePiece tokenizers (UTF-8 bytes plus generous per-message allowances), and the
limits its ``profile`` declares, or those given to the chain.

A chat model wrapped by ``bind``, ``with_config``, ``with_retry`` (``RunnableBindingBase``) or
``with_fallbacks`` (``RunnableWithFallbacks``) is counted through the models inside, with the
keyword arguments bound on the way (``max_tokens``, ``tools``), while the chain calls the
wrapper itself. Where several models may answer (fallbacks), the budget holds for each: counts
are the largest any of them gives, limits the tightest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langchain_core.runnables.base import RunnableBindingBase
from langchain_core.runnables.fallbacks import RunnableWithFallbacks

from langchain_multillm._base import ModelSurface, Prompt
from langchain_multillm.errors import InvalidInputError
from langchain_multillm.fit import FitReport, Limits, chat_bound, decide

__all__ = ["Budget", "Leaf", "leaves"]

WRAPPERS = "bind, with_config, with_retry or with_fallbacks"


@dataclass(frozen=True)
class Leaf:
    """One chat model that may answer, with the keyword arguments bound around it."""

    model: BaseChatModel
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def surface(self) -> ModelSurface | None:
        """The model as this package's model (exact counts, known limits), or None."""
        return self.model if isinstance(self.model, ModelSurface) else None

    @property
    def tools(self) -> Sequence[Any] | None:
        """Tools bound to the model (they count toward every prompt)."""
        tools = self.kwargs.get("tools")
        return tools if isinstance(tools, Sequence) and tools else None

    @property
    def max_tokens(self) -> int | None:
        """The output tokens this model asks for by itself: bound, else its own field."""
        value = self.kwargs.get("max_tokens", getattr(self.model, "max_tokens", None))
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def leaves(llm: Any) -> list[Leaf]:
    """Every chat model inside ``llm`` that may answer, first the one tried first.

    ``llm`` is a chat model, or one wrapped by ``bind`` / ``with_config`` / ``with_retry``
    (``RunnableBindingBase``) or ``with_fallbacks`` (``RunnableWithFallbacks``), nested in any way.
    """
    return _leaves(llm, {}, llm)


def _leaves(runnable: Any, outer: dict[str, Any], given: Any) -> list[Leaf]:
    if isinstance(runnable, BaseChatModel):
        return [Leaf(runnable, dict(outer))]
    if isinstance(runnable, RunnableBindingBase):
        # A binding calls what it wraps with its kwargs under those passed to it (outer wins).
        return _leaves(runnable.bound, {**runnable.kwargs, **outer}, given)
    if isinstance(runnable, RunnableWithFallbacks):
        out = _leaves(runnable.runnable, outer, given)
        for fallback in runnable.fallbacks:
            out.extend(_leaves(fallback, outer, given))
        return out
    inner = "" if runnable is given else f" (inside it: {type(runnable).__name__})"
    raise InvalidInputError(
        "llm",
        f"must be a LangChain chat model, or one wrapped by {WRAPPERS}; "
        f"got {type(given).__name__}{inner}",
    )


def _room(limits: Limits, max_tokens: int | None) -> int | None:
    caps = []
    if limits.context_window is not None:
        caps.append(limits.context_window - (max_tokens or 1))
    if limits.max_input_tokens is not None:
        caps.append(limits.max_input_tokens)
    return min(caps) if caps else None


def _tightest(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class Budget:
    """Counts and limits for a chat model, or a wrapped one (exact where the models can count).

    ``llm`` is what the chain calls; ``context_window`` (given to the chain) wins over every
    model's own window.
    """

    def __init__(self, llm: Runnable[Any, Any], context_window: int | None = None) -> None:
        if context_window is not None and (
            not isinstance(context_window, int) or context_window <= 0
        ):
            raise InvalidInputError("context_window", f"must be > 0; got {context_window!r}")
        self.llm = llm
        self.context_window = context_window
        self.leaves = leaves(llm)

    @property
    def exact(self) -> bool:
        """Whether counts come from the models' own tokenizers."""
        return all(leaf.surface is not None for leaf in self.leaves)

    @property
    def sends_max_tokens(self) -> bool:
        """Whether the chain may pass ``max_tokens`` to the call (every model is this
        package's, so each takes it and checks it)."""
        return self.exact

    def max_tokens(self) -> list[int | None]:
        """Each model's own ``max_tokens`` (bound, else its field; None where unset)."""
        return [leaf.max_tokens for leaf in self.leaves]

    # ---- limits ----
    def _leaf_limits(self, leaf: Leaf) -> Limits:
        surface = leaf.surface
        if surface is not None:
            found = surface.get_limits()
        else:
            profile = getattr(leaf.model, "profile", None) or {}
            found = Limits(
                max_input_tokens=profile.get("max_input_tokens"),
                max_output_tokens=profile.get("max_output_tokens"),
            )
        if self.context_window is not None:
            return Limits(
                context_window=self.context_window,
                max_input_tokens=found.max_input_tokens,
                max_output_tokens=found.max_output_tokens,
            )
        return found

    def limits(self) -> Limits:
        """The tightest limits of the models that may answer; ``context_window`` given to the
        chain wins."""
        each = [self._leaf_limits(leaf) for leaf in self.leaves]
        return Limits(
            context_window=_tightest([lim.context_window for lim in each]),
            max_input_tokens=_tightest([lim.max_input_tokens for lim in each]),
            max_output_tokens=_tightest([lim.max_output_tokens for lim in each]),
        )

    # ---- counts ----
    def _distinct(self, *, with_tools: bool) -> list[Leaf]:
        """The leaves that may count differently (the same model counts once)."""
        seen: set[tuple[int, int]] = set()
        out = []
        for leaf in self.leaves:
            key = (id(leaf.model), id(leaf.tools) if with_tools else 0)
            if key not in seen:
                seen.add(key)
                out.append(leaf)
        return out

    def text(self, text: str) -> int:
        """Tokens ``text`` takes inside a message (the most any of the models counts)."""
        counts = []
        for leaf in self._distinct(with_tools=False):
            surface = leaf.surface
            counts.append(
                surface.count_tokens(text) if surface is not None else len(text.encode("utf-8")) + 2
            )
        return max(counts)

    def _count(self, leaf: Leaf, messages: Sequence[BaseMessage]) -> int:
        surface = leaf.surface
        if surface is not None:
            return surface.count_tokens(list(messages), tools=leaf.tools)
        tools = leaf.tools
        dicts = list(tools) if tools and all(isinstance(t, dict) for t in tools) else None
        return chat_bound(Prompt(messages=list(messages), tools=dicts), None) or 0

    def count(self, messages: Sequence[BaseMessage]) -> int:
        """Tokens ``messages`` take as a prompt (exact, or the conservative estimate; the
        most any of the models counts)."""
        return max(self._count(leaf, messages) for leaf in self._distinct(with_tools=True))

    # ---- fit ----
    def _leaf_fit(
        self, leaf: Leaf, messages: Sequence[BaseMessage], max_tokens: int | None
    ) -> FitReport:
        surface = leaf.surface
        if surface is not None and self.context_window is None:
            return surface.check_fit(list(messages), max_tokens=max_tokens, tools=leaf.tools)
        return decide(
            self._count(leaf, messages),
            exact=surface is not None,
            max_tokens=max_tokens,
            limits=self._leaf_limits(leaf),
        )

    def fit(self, messages: Sequence[BaseMessage], max_tokens: int | None) -> FitReport:
        """The fit report of ``messages`` plus ``max_tokens`` of output.

        This package's models decide by their cheap bound first and count exactly near the
        limit. With several models, the first that refuses gives the report; when all accept,
        the one with the least room left.
        """
        reports = []
        for leaf in self._distinct(with_tools=True):
            report = self._leaf_fit(leaf, messages, max_tokens)
            if not report.fits:
                return report
            reports.append(report)
        return min(reports, key=lambda r: float("inf") if r.room is None else r.room)

    def room(self, max_tokens: int | None) -> int | None:
        """Prompt tokens the limits allow when ``max_tokens`` are kept for the output (the
        least any of the models allows)."""
        return _tightest([_room(self._leaf_limits(leaf), max_tokens) for leaf in self.leaves])
