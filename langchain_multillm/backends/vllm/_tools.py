"""Tool calls and structured output on in-process vLLM: forced calls decoded over the
tools' schemas (:mod:`langchain_multillm._tool_forcing`, shared with llama.cpp), unforced ones
read by one of vLLM's tool parsers (:class:`_ParsedTools`), and ``response_format`` as vLLM's
structured outputs."""

from __future__ import annotations

from typing import Any

from langchain_multillm._tool_forcing import ForcedTool, call_id
from langchain_multillm.errors import InvalidInputError


class _ParsedTools:
    """Unforced tool calls (``tool_choice`` "auto") read out of the answer by one of vLLM's tool
    parsers, the ones its OpenAI server takes as ``--tool-call-parser`` (hermes, llama3_json,
    mistral, ...). The answer is held until it is complete, then parsed once."""

    def __init__(
        self, name: str, tokenizer: Any, model: str, messages: list[dict[str, Any]], tools: Any
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        parser_cls = self.parser_class(name)
        request = ChatCompletionRequest(
            model=model, messages=messages, tools=tools, tool_choice="auto"
        )
        self.parser = parser_cls(tokenizer, request.tools)
        self.request = self.parser.adjust_request(request)
        # Some models' tool-call tags are special tokens: the parser says whether to keep them.
        self.skip_special_tokens = bool(getattr(self.request, "skip_special_tokens", True))

    @staticmethod
    def parser_class(name: str) -> Any:
        """vLLM's tool parser called ``name``; an unknown name is refused, listing vLLM's."""
        from vllm.tool_parsers import ToolParserManager

        try:
            return ToolParserManager.get_tool_parser(name)
        except KeyError:
            known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
            raise InvalidInputError(
                "tool_call_parser",
                f"the installed vLLM has no tool parser {name!r}; it has {known}",
            ) from None

    def read(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, OpenAI tool calls) of a finished answer."""
        info = self.parser.extract_tool_calls(text, self.request)
        if not info.tools_called or not info.tool_calls:
            return text, []
        calls = [
            {
                "index": i,
                "id": getattr(tc, "id", None) or call_id(),
                "type": "function",
                "function": {"name": tc.function.name, "arguments": tc.function.arguments},
            }
            for i, tc in enumerate(info.tool_calls)
        ]
        return info.content or "", calls


# A chat request's tool calls: forced (decoded under a schema), parsed, or none.
_Plan = ForcedTool | _ParsedTools | None


def _response_format(rf: Any) -> dict[str, Any] | None:
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object", "text"):
        raise InvalidInputError(
            "response_format", f"must be a json_schema, json_object or text format; got {rf!r}"
        )
    if rf["type"] == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidInputError("response_format", "json_schema needs json_schema.schema")
        return {"json": schema}
    if rf["type"] == "json_object":
        return {"json_object": True}
    return None
