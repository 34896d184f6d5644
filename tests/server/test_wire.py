"""The wire format on the serving side: requests to LangChain calls, answers to OpenAI JSON."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_multillm.errors import InvalidInputError
from langchain_multillm.server.openai_wire import (
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    chat_completion_body,
    text_completion_body,
    to_chat_call,
    to_completion_call,
)

TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    },
}


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def test_every_role_and_tool_messages() -> None:
    req = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": "you add"},
            {"role": "user", "content": [{"type": "text", "text": "1+2?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
            {"role": "function", "name": "add", "content": "3"},
        ],
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    call = to_chat_call(req)
    types = [type(m) for m in call.messages]
    assert types == [
        SystemMessage,
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        FunctionMessage,
    ]
    ai = call.messages[3]
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls[0]["args"] == {"a": 1} and ai.tool_calls[0]["id"] == "call_1"
    assert isinstance(call.messages[4], ToolMessage) and call.messages[4].tool_call_id == "call_1"
    assert call.tools == [TOOL]
    assert call.kwargs["tools"] == [TOOL]
    assert call.kwargs["tool_choice"] == {"type": "function", "function": {"name": "add"}}


def test_sampling_fields_go_to_the_model_and_gateway_fields_do_not() -> None:
    call = to_chat_call(
        chat(
            max_new_tokens=7,
            temperature=0.5,
            top_p=0.9,
            top_k=20,
            typical_p=0.8,
            repetition_penalty=1.1,
            seed=3,
            stop="END",
            response_format={"type": "json_object"},
            stream=True,
            stream_options={"include_usage": True},
            data={"docs": [1, 2]},
            user="u1",
            context_overflow="clamp",
            vendor_knob=5,
        )
    )
    assert call.max_tokens == 7
    assert call.stop == ["END"]
    assert call.stream and call.include_usage
    assert call.data == {"docs": [1, 2]}
    assert call.policy == "clamp"
    assert call.kwargs == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "typical_p": 0.8,
        "repetition_penalty": 1.1,
        "seed": 3,
        "response_format": {"type": "json_object"},
        "vendor_knob": 5,  # unknown fields go to the model, which takes or refuses them
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 2}, "n"),
        ({"max_tokens": 5, "max_new_tokens": 6}, "max_tokens, max_new_tokens"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"callbacks": []}, "callbacks"),
        ({"ls_provider": "x"}, "ls_provider"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "f", "arguments": "not json"}}
                        ],
                    }
                ]
            },
            "messages[0]",
        ),
    ],
)
def test_refusals_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        to_chat_call(chat(**fields))
    assert err.value.field == field


def test_same_max_tokens_under_two_names_is_fine_and_none_chosen_without_tools() -> None:
    call = to_chat_call(chat(max_tokens=5, max_completion_tokens=5, n=1, tool_choice="none"))
    assert call.max_tokens == 5
    assert "tool_choice" not in call.kwargs


def test_completion_requests() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["Once"], "max_tokens": 3, "echo": False, "data": {"k": 1}}
    )
    call = to_completion_call(req)
    assert (call.prompt, call.max_tokens, call.data, call.kwargs) == ("Once", 3, {"k": 1}, {})
    for fields, field in [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"suffix": "x"}, "suffix"),
        ({"logprobs": 1}, "logprobs"),
        ({"best_of": 2}, "best_of"),
        ({"prompt": []}, "prompt"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            to_completion_call(
                CompletionRequest.model_validate({"model": "m", "prompt": "a", **fields})
            )
        assert err.value.field == field


@pytest.mark.parametrize("prompt", ["", [""]])
def test_an_empty_prompt_is_refused_by_the_schema(prompt: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_answers_as_openai_json() -> None:
    msg = AIMessage(
        content="",
        tool_calls=[{"name": "add", "args": {"a": 1}, "id": "call_1", "type": "tool_call"}],
        usage_metadata={"input_tokens": 10, "output_tokens": 4, "total_tokens": 14},
        response_metadata={"finish_reason": "tool_calls"},
    )
    body = chat_completion_body(msg, model="m", data={"x": 1})
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == "m"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"type": "function", "id": "call_1", "function": {"name": "add", "arguments": '{"a": 1}'}}
    ]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert body["data"] == {"x": 1}
    text = text_completion_body("abc", {"finish_reason": "length", "usage": {"x": 1}}, model="t")
    assert text["choices"][0]["text"] == "abc" and text["choices"][0]["finish_reason"] == "length"
    assert text["usage"] == {"x": 1} and "data" not in text


def test_chunks() -> None:
    w = ChunkWriter("m")
    first = w.feed(AIMessageChunk(content="Hel"))
    assert first is not None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert w.feed(AIMessageChunk(content="")) is None
    tool = w.feed(
        AIMessageChunk(
            content="",
            tool_call_chunks=[{"name": "add", "args": '{"a"', "id": "c1", "index": 0}],
        )
    )
    assert tool is not None
    assert tool["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "c1",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a"'},
        }
    ]
    last = w.feed(
        AIMessageChunk(
            content="",
            response_metadata={"finish_reason": "length"},
            usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
        )
    )
    assert last is not None
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "length",
        "logprobs": None,
    }
    usage = w.usage_chunk()
    assert usage is not None and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert {first["id"], last["id"], usage["id"]} == {w.id}


def test_a_whole_answer_as_chunks() -> None:
    w = ChunkWriter("m")
    msg = AIMessage(content="all of it", response_metadata={"finish_reason": "stop"})
    content, finish = w.whole(msg)
    assert content["choices"][0]["delta"] == {"role": "assistant", "content": "all of it"}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert w.usage_chunk() is None  # no usage reported: none invented
