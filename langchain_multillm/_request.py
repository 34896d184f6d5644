"""The request types every backend hook takes: what is counted (:class:`Prompt`) and what is
sent (:class:`ChatRequest`, :class:`CompletionRequest`).

Apart from ``_base.py`` so that ``fit.py`` (which ``_base.py`` imports) can name them: this
module imports nothing of the package at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, MessageLikeRepresentation
from langchain_core.prompt_values import PromptValue

if TYPE_CHECKING:
    from langchain_multillm.fit import FitReport

__all__ = ["ChatRequest", "CompletionRequest", "Prompt", "PromptInput"]

# What invoke takes: text, a prompt value, or messages in any form LangChain converts
# (message objects, ("role", "text") tuples, dicts).
PromptInput = str | Sequence[MessageLikeRepresentation] | PromptValue


@dataclass
class Prompt:
    """What is counted: raw text, or chat messages (with the tools bound to the call)."""

    text: str | None = None
    messages: list[BaseMessage] | None = None
    tools: list[dict[str, Any]] | None = None


@dataclass
class ChatRequest:
    """A validated chat call, ready for a backend."""

    messages: list[BaseMessage]
    params: dict[str, Any]
    fit: FitReport
    stream: bool = False
    tools: list[dict[str, Any]] | None = None


@dataclass
class CompletionRequest:
    """A validated completion call, ready for a backend."""

    prompt: str
    params: dict[str, Any]
    fit: FitReport
    stream: bool = False
