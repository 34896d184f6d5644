"""Token budgets for chains: counts and limits through the fit contract, for any chat model.

A model of this package counts with its backend's own tokenizer and knows its limits. Any
other LangChain chat model gets a conservative estimate that never under-counts for byte-level
BPE and SentencePiece tokenizers (UTF-8 bytes plus generous per-message allowances), and the
limits its ``profile`` declares, or those given to the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from langchain_multillm._base import ModelSurface, Prompt
from langchain_multillm.errors import InvalidInputError
from langchain_multillm.fit import FitReport, Limits, chat_bound, decide

__all__ = ["Budget"]


@dataclass
class Budget:
    """Counts and limits for one chat model (exact where the model can count)."""

    llm: BaseChatModel
    context_window: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.llm, BaseChatModel):
            raise InvalidInputError(
                "llm", f"must be a LangChain chat model; got {type(self.llm).__name__}"
            )
        if self.context_window is not None and self.context_window <= 0:
            raise InvalidInputError("context_window", f"must be > 0; got {self.context_window}")

    @property
    def exact(self) -> bool:
        """Whether counts come from the model's own tokenizer."""
        return isinstance(self.llm, ModelSurface)

    def limits(self) -> Limits:
        """The model's limits; ``context_window`` given to the chain wins."""
        if isinstance(self.llm, ModelSurface):
            found = self.llm.get_limits()
        else:
            profile = getattr(self.llm, "profile", None) or {}
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

    def text(self, text: str) -> int:
        """Tokens ``text`` takes inside a message."""
        if isinstance(self.llm, ModelSurface):
            return self.llm.count_tokens(text)
        return len(text.encode("utf-8")) + 2

    def count(self, messages: Sequence[BaseMessage]) -> int:
        """Tokens ``messages`` take as a prompt (exact, or the conservative estimate)."""
        if isinstance(self.llm, ModelSurface):
            return self.llm.count_tokens(list(messages))
        return chat_bound(Prompt(messages=list(messages)), None) or 0

    def fit(self, messages: Sequence[BaseMessage], max_tokens: int | None) -> FitReport:
        """The fit report of ``messages`` plus ``max_tokens`` of output.

        This package's models decide by their cheap bound first and count exactly near the limit.
        """
        if isinstance(self.llm, ModelSurface) and self.context_window is None:
            return self.llm.check_fit(list(messages), max_tokens=max_tokens)
        return decide(
            self.count(messages), exact=self.exact, max_tokens=max_tokens, limits=self.limits()
        )

    def room(self, max_tokens: int | None) -> int | None:
        """Prompt tokens the limits allow when ``max_tokens`` are kept for the output."""
        limits = self.limits()
        caps = []
        if limits.context_window is not None:
            caps.append(limits.context_window - (max_tokens or 1))
        if limits.max_input_tokens is not None:
            caps.append(limits.max_input_tokens)
        return min(caps) if caps else None
