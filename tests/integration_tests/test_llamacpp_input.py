"""Input the embedded llama.cpp models cannot take is refused by name, before any generation:
media content parts (the chat template renders text only) and, for completion, an empty prompt
on a model that adds no BOS token (llama.cpp would fail an assertion)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

from langchain_multillm import ChatLlamaCpp, InvalidInputError, LlamaCpp

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
FILE = {"type": "file", "file": {"file_data": "AAAA", "filename": "a.pdf"}}
STANDARD_IMAGE = {"type": "image", "base64": "AAAA", "mime_type": "image/png"}


@pytest.fixture(scope="module")
def chat(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, n_threads=2, max_tokens=2, temperature=0)


@pytest.mark.parametrize(
    ("part", "kind"),
    [(IMAGE, "image_url"), (AUDIO, "input_audio"), (FILE, "file"), (STANDARD_IMAGE, "image_url")],
)
async def test_media_parts_are_refused_by_name(chat: ChatLlamaCpp, part: dict, kind: str) -> None:
    messages = [SystemMessage("Be terse."), HumanMessage([{"type": "text", "text": "What?"}, part])]
    field = "messages[1].content[1].type"
    calls = [
        lambda: chat.invoke(messages),
        lambda: list(chat.stream(messages)),
        lambda: chat.count_tokens(messages),
        lambda: chat.check_fit(messages),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert err.value.field == field
        assert repr(kind) in str(err.value) and "'text'" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        await chat.ainvoke(messages)
    assert err.value.field == field


def test_text_parts_and_strings_are_taken(chat: ChatLlamaCpp) -> None:
    parts = [HumanMessage([{"type": "text", "text": "Say"}, "hi."])]
    assert chat.count_tokens(parts) == chat.count_tokens([HumanMessage("Say\nhi.")])
    out = chat.invoke(parts)
    assert out.response_metadata["finish_reason"] in ("stop", "length")


def test_a_tool_result_with_an_image_is_refused(chat: ChatLlamaCpp) -> None:
    messages = [HumanMessage("Look."), ToolMessage([IMAGE], tool_call_id="c1")]
    with pytest.raises(InvalidInputError) as err:
        chat.count_tokens(messages)
    assert err.value.field == "messages[1].content[0].type"


async def test_an_empty_completion_prompt_is_a_typed_error(llama_cpp_available: str) -> None:
    llm = LlamaCpp(model_path=llama_cpp_available, n_threads=2, max_tokens=2)
    if llm.count_tokens("") > 0:
        pytest.skip("this GGUF adds a BOS token: an empty prompt has a token to continue from")
    for call in (lambda: llm.invoke(""), lambda: list(llm.stream(""))):
        with pytest.raises(InvalidInputError) as err:
            call()
        assert err.value.field == "prompt" and "empty" in str(err.value)
    with pytest.raises(InvalidInputError):
        await llm.ainvoke("")
    assert isinstance(llm.invoke("Hello", max_tokens=1), str)  # the engine still serves
