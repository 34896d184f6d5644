"""Forced tool calls for the backends that decode under a JSON schema themselves (in-process
vLLM, llama.cpp): which tool a ``tool_choice`` forces, the schema its arguments are decoded
under, and the generated JSON turned back into an OpenAI tool call.

``tool_choice`` a tool's name (or ``{"type": "function", "function": {"name": ...}}``) forces
that tool: the answer is decoded under its parameters' schema and is the arguments.
``"required"`` with one tool forces that one; with several, the answer is decoded under
:func:`any_tool_schema` (``{"name": ..., "arguments": ...}`` for any of them) and names its
tool. An answer that does not parse (cut short by ``max_tokens``) is no call: the backend
passes it on as text with its finish reason, so nothing half-made looks like a call.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from langchain_multillm.errors import InvalidInputError

__all__ = ["ForcedTool", "any_tool_schema", "call_id", "forced_tool", "tool_call"]


def call_id() -> str:
    """A fresh tool-call id, in OpenAI's shape (``call_`` and 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(name: str, arguments: Any, *, index: int = 0) -> dict[str, Any]:
    """An OpenAI tool call (a stream delta's ``tool_calls`` item) of ``name`` with
    ``arguments`` (a JSON value, serialized here)."""
    return {
        "index": index,
        "id": call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def _functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t["function"] for t in tools if "function" in t]


def any_tool_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of a call of any of ``tools`` (OpenAI format):
    ``{"name": <one of them>, "arguments": <its parameters>}``."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": f["name"]},
                    "arguments": f.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for f in _functions(tools)
        ]
    }


class ForcedTool:
    """How a forced tool call is decoded: one named tool (its parameters' schema) or any of
    several (:func:`any_tool_schema`, ``name`` None)."""

    def __init__(self, tools: list[dict[str, Any]], name: str | None) -> None:
        self.name = name
        if name is not None:
            fn = next((f for f in _functions(tools) if f["name"] == name), None)
            if fn is None:
                raise InvalidInputError("tool_choice", f"names no bound tool: {name!r}")
            self.schema: dict[str, Any] = fn.get("parameters") or {
                "type": "object",
                "properties": {},
            }
        else:
            self.schema = any_tool_schema(tools)

    def call(self, text: str) -> dict[str, Any] | None:
        """The OpenAI tool call the generated JSON stands for, or None if it is not one."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if self.name is not None:
            return tool_call(self.name, data)
        if isinstance(data, dict) and "name" in data and "arguments" in data:
            return tool_call(data["name"], data["arguments"])
        return None


def forced_tool(choice: Any, tools: list[dict[str, Any]] | None) -> ForcedTool | None:
    """The call ``tool_choice`` forces over ``tools``, or None where it forces none ("auto",
    "none", no choice, no tools). A choice of another shape, or naming no bound tool, is
    refused (:class:`~langchain_multillm.errors.InvalidInputError` on ``tool_choice``)."""
    if not tools or choice in (None, "auto", "none"):
        return None
    names = [f["name"] for f in _functions(tools)]
    if choice == "required":
        return ForcedTool(tools, names[0] if len(names) == 1 else None)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return ForcedTool(tools, name)
    if isinstance(choice, str) and choice in names:
        return ForcedTool(tools, choice)
    raise InvalidInputError(
        "tool_choice", f"must be auto, none, required or a tool; got {choice!r}"
    )
