"""The OpenAI wire format's messages out (langchain_multillm._openai.to_openai_messages)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from langchain_multillm._openai import to_openai_messages

CALL = {"name": "get_weather", "args": {"location": "Paris"}, "id": "call_1", "type": "tool_call"}


def test_tool_message_has_no_name() -> None:
    out = to_openai_messages([ToolMessage("sunny", tool_call_id="call_1", name="get_weather")])
    assert out == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


def test_v1_assistant_blocks_are_not_sent_as_content() -> None:
    ai = AIMessage(
        content=[
            {"type": "reasoning", "reasoning": "think"},
            {"type": "text", "text": "Let me "},
            {"type": "text", "text": "check."},
            {"type": "tool_call", "id": "call_1", "name": "get_weather", "args": {}},
        ],
        tool_calls=[CALL],
    )
    (msg,) = to_openai_messages([ai])
    assert msg["content"] == "Let me check."
    assert [tc["id"] for tc in msg["tool_calls"]] == ["call_1"]


def test_v1_assistant_with_only_a_tool_call_sends_no_content() -> None:
    ai = AIMessage(content=[{"type": "tool_call", **CALL}], tool_calls=[CALL])
    (msg,) = to_openai_messages([HumanMessage("hi"), ai])[1:]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "get_weather"


def test_plain_assistant_text_is_unchanged() -> None:
    (msg,) = to_openai_messages([AIMessage("hello")])
    assert msg == {"role": "assistant", "content": "hello"}


def test_counts_take_messages_in_any_form_invoke_takes() -> None:
    from langchain_core.messages import SystemMessage

    from langchain_multillm import ChatDeepSeek

    llm = ChatDeepSeek(api_key="sk-test", base_url="http://127.0.0.1:9")
    objects = [SystemMessage("Be brief."), HumanMessage("What is the capital of France?")]
    tuples = [("system", "Be brief."), ("human", "What is the capital of France?")]
    dicts = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    expected = llm.count_tokens(objects)
    assert llm.count_tokens(tuples) == llm.count_tokens(dicts) == expected
    assert llm.check_fit(tuples, max_tokens=32).prompt_tokens == expected


def test_tgi_chat_stream_overload_is_a_rate_limit() -> None:
    # TGI's chat stream gives every in-stream error http_status_code 422, its overload too.
    from langchain_multillm._openai import iter_sse
    from langchain_multillm.errors import BadRequestError, RateLimitError

    overloaded = 'data:{"error":{"message":"Model is overloaded","http_status_code":422}}'
    with pytest.raises(RateLimitError):
        list(iter_sse([overloaded, "data: [DONE]"], backend="tgi"))
    invalid = 'data:{"error":{"message":"Input validation error","http_status_code":422}}'
    with pytest.raises(BadRequestError):
        list(iter_sse([invalid, "data: [DONE]"], backend="tgi"))
