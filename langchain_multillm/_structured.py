"""Structured output cut short by ``max_tokens``: a typed error instead of a parser's.

A structured answer that stopped at ``max_tokens`` is half a JSON object (or a tool call with
half its arguments). A parser fails on it with a generic message, or worse, LangChain's
lenient JSON parsing completes it into an object that validates. The step built here sits
between the model and the parser: when the answer's ``finish_reason`` says it was cut, and
the output is not complete JSON, it raises :class:`IncompleteResponseError` naming
``max_tokens`` (as ``ChatOpenAI`` raises openai's ``LengthFinishReasonError``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableGenerator
from langchain_core.utils.json import parse_json_markdown

from langchain_multillm.errors import IncompleteResponseError

__all__ = ["CUT_FINISH_REASONS", "cut_by_max_tokens", "stop_if_cut"]

CUT_FINISH_REASONS = frozenset({"length", "max_tokens"})
"""Finish reasons (lower-cased) that mean the output stopped at ``max_tokens``: ``length`` on
the OpenAI wire (vLLM, llama.cpp, TGI, Azure, DeepSeek), ``MAX_TOKENS`` from Gemini."""


def cut_by_max_tokens(message: BaseMessage) -> str | None:
    """The finish reason when ``message`` stopped at ``max_tokens``, else None."""
    meta = getattr(message, "response_metadata", None) or {}
    finish = meta.get("finish_reason")
    if isinstance(finish, str) and finish.lower() in CUT_FINISH_REASONS:
        return finish
    return None


def _complete(message: BaseMessage, *, tools: bool) -> bool:
    """Whether a cut answer still holds the whole structure (complete, strict JSON).

    A tool call that ended at ``max_tokens`` never is: servers say ``tool_calls`` (or
    ``stop``) for one that finished.
    """
    if tools:
        return False
    try:
        parse_json_markdown(message.text, parser=json.loads)
    except (ValueError, TypeError):
        return False
    return True


def _error(message: BaseMessage, finish: str, backend: str | None) -> IncompleteResponseError:
    usage = getattr(message, "usage_metadata", None) or {}
    n = usage.get("output_tokens")
    after = f" after {n} output tokens" if n else ""
    return IncompleteResponseError(
        f"the structured output was cut by max_tokens{after} (finish_reason {finish!r}) "
        "before it was complete; raise max_tokens",
        partial_text=message.text,
        backend=backend,
    )


def _check(total: BaseMessage | None, *, tools: bool, backend: str | None) -> None:
    if total is None:
        return
    finish = cut_by_max_tokens(total)
    if finish is not None and not _complete(total, tools=tools):
        raise _error(total, finish, backend)


def stop_if_cut(*, tools: bool, backend: str | None) -> Runnable[Any, Any]:
    """A step that passes the model's output through (streamed chunks as they come) and
    raises :class:`IncompleteResponseError` at its end when the output was cut by
    ``max_tokens`` and is not complete. ``tools``: the structure is a forced tool call."""

    def check(chunks: Iterator[Any]) -> Iterator[Any]:
        total: Any = None
        for chunk in chunks:
            total = chunk if total is None else total + chunk
            yield chunk
        _check(total, tools=tools, backend=backend)

    async def acheck(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        total: Any = None
        async for chunk in chunks:
            total = chunk if total is None else total + chunk
            yield chunk
        _check(total, tools=tools, backend=backend)

    return RunnableGenerator(check, acheck, name="stop_if_cut_by_max_tokens")
