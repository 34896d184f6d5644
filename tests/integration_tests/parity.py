"""One check for both real-engine tiers: invoke, stream, ainvoke and astream give the same
content, usage and response metadata (finish_reason, model_name)."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage


def merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    return full


def assert_four_ways_agree(chat: Any, messages: list[BaseMessage]) -> AIMessage:
    inv = chat.invoke(messages)
    streamed = merge(list(chat.stream(messages)))
    ainv = asyncio.run(chat.ainvoke(messages))

    async def collect() -> list[AIMessageChunk]:
        return [c async for c in chat.astream(messages)]

    astreamed = merge(asyncio.run(collect()))
    for other in (streamed, ainv, astreamed):
        assert other.content == inv.content
        assert other.usage_metadata == inv.usage_metadata
        for key in ("finish_reason", "model_name"):
            assert other.response_metadata[key] == inv.response_metadata[key]
    assert inv.content
    assert inv.usage_metadata is not None and inv.usage_metadata["output_tokens"] > 0
    return inv
