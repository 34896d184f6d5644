"""An unknown setting is an error that names it (LangChain's base classes would ignore it)."""

import pytest
from pydantic import ValidationError

from langchain_multillm import ChatLlamaCpp, ChatVLLMServer, LlamaCpp, VLLMServer


@pytest.mark.parametrize("cls", [ChatLlamaCpp, LlamaCpp, ChatVLLMServer, VLLMServer])
def test_unknown_setting_is_refused_by_name(cls: type) -> None:
    with pytest.raises(ValidationError, match="temprature"):
        cls(model="m", base_url="http://127.0.0.1:1/v1", temprature=0.5)


def test_llama_cpp_takes_its_own_name_for_the_repetition_penalty() -> None:
    assert ChatLlamaCpp(repeat_penalty=1.3).repetition_penalty == 1.3
    assert ChatLlamaCpp(repetition_penalty=1.2).repetition_penalty == 1.2
