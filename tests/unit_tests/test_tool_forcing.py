"""The forced-tool-call module both in-process backends decode with (vLLM's structured
outputs, llama.cpp's grammar): which tool a ``tool_choice`` forces, the schema, and the
generated JSON back as an OpenAI tool call."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from langchain_multillm._tool_forcing import ForcedTool, any_tool_schema, call_id, forced_tool
from langchain_multillm.errors import InvalidInputError


def tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


WEATHER = tool(
    "weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = tool("time")  # no parameters: any object
TOOLS = [WEATHER, TIME]


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_choices_that_force_nothing(choice: Any) -> None:
    assert forced_tool(choice, TOOLS) is None
    assert forced_tool("required", None) is None and forced_tool("required", []) is None


@pytest.mark.parametrize(
    "choice", ["weather", {"type": "function", "function": {"name": "weather"}}]
)
def test_a_named_tool_is_decoded_under_its_parameters(choice: Any) -> None:
    forced = forced_tool(choice, TOOLS)
    assert forced is not None and forced.name == "weather"
    assert forced.schema == WEATHER["function"]["parameters"]
    call = forced.call('{"city": "Paris"}')
    assert call is not None and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_required_with_one_tool_forces_that_one() -> None:
    forced = forced_tool("required", [WEATHER])
    assert forced is not None and forced.name == "weather"


def test_required_with_several_tools_decodes_a_name_and_its_arguments() -> None:
    forced = forced_tool("required", TOOLS)
    assert forced is not None and forced.name is None
    assert forced.schema == any_tool_schema(TOOLS)
    ok = {"name": "weather", "arguments": {"city": "Oslo"}}
    jsonschema.validate(ok, forced.schema)
    jsonschema.validate({"name": "time", "arguments": {}}, forced.schema)
    for bad in ({"name": "weather", "arguments": {}}, {"name": "nope", "arguments": {}}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, forced.schema)
    call = forced.call(json.dumps(ok))
    assert call is not None and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert call["type"] == "function" and call["index"] == 0


@pytest.mark.parametrize("text", ['{"city": "Par', "", "not json"])
def test_an_answer_that_does_not_parse_is_no_call(text: str) -> None:
    assert ForcedTool(TOOLS, "weather").call(text) is None
    assert ForcedTool(TOOLS, None).call(text) is None


@pytest.mark.parametrize("text", ['["weather"]', '{"name": "weather"}', '{"arguments": {}}'])
def test_json_that_is_not_a_call_of_any_tool_is_no_call(text: str) -> None:
    assert ForcedTool(TOOLS, None).call(text) is None


@pytest.mark.parametrize(
    "choice",
    ["nope", 3, {"type": "function", "function": {"name": "nope"}}, {"type": "function"}],
)
def test_a_choice_that_forces_no_bound_tool_is_refused_by_name(choice: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        forced_tool(choice, TOOLS)
    assert info.value.field == "tool_choice"


def test_call_ids_are_fresh_and_openai_shaped() -> None:
    ids = {call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("call_") and len(i) == 29 for i in ids)


def test_llama_cpp_builds_its_grammar_from_the_schema() -> None:
    grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python")
    built = grammar.LlamaGrammar.from_json_schema(json.dumps(any_tool_schema(TOOLS)), verbose=False)
    assert built is not None
