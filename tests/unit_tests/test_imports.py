import subprocess
import sys

import langchain_multillm

EXPECTED_ALL = [
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BadRequestError",
    "ChatAzureOpenAI",
    "ChatDeepSeek",
    "ChatGemini",
    "ChatLlamaCpp",
    "ChatRouter",
    "ChatTGI",
    "ChatVLLM",
    "ChatVLLMServer",
    "ContentFilteredError",
    "ContextWindowExceededError",
    "FitReport",
    "HealthReport",
    "IncompleteResponseError",
    "InvalidInputError",
    "Limits",
    "LlamaCpp",
    "ModelNotFoundError",
    "MultiLLMError",
    "PermissionDeniedError",
    "RateLimitError",
    "TGI",
    "VLLM",
    "VLLMServer",
    "__version__",
    "create_rag_chain",
    "create_summarize_chain",
    "load_chat_model",
]


def test_all_is_pinned() -> None:
    assert sorted(langchain_multillm.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain_multillm, name) is not None


def test_bare_import_loads_no_engine_or_sdk() -> None:
    code = (
        "import sys, langchain_multillm;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('llama_cpp', 'vllm', 'torch', 'openai', 'google', 'transformers', 'huggingface_hub',"
        " 'typer', 'rich', 'bm25s', 'sentence_transformers')];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_backend_import_loads_no_engine() -> None:
    code = (
        "import sys; from langchain_multillm import ChatVLLMServer, ChatLlamaCpp;"
        "print([m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'vllm', 'torch')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_index_import_loads_no_retrieval_engine() -> None:
    """bm25s and sentence-transformers load when an index is built, typer only for the CLI."""
    code = (
        "import sys; import langchain_multillm.chains.index;"
        "print([m for m in sys.modules if m.split('.')[0] in "
        "('bm25s', 'sentence_transformers', 'torch', 'typer')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = langchain_multillm.Nope
