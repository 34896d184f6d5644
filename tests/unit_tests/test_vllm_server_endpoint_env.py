"""``LLM_MODEL_SERVER_ENDPOINT`` (the LLM microservice's variable) is a server's root: the vLLM
server classes add ``/v1`` where it is missing; ``VLLM_BASE_URL`` is taken as it is."""

import pytest

from langchain_multillm import ChatVLLMServer, VLLMServer


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLLM_BASE_URL", "LLM_MODEL_SERVER_ENDPOINT", "LLM_TLS_SKIP_VERIFY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("endpoint", "base_url"),
    [
        ("http://vllm-svc.invalid:8000", "http://vllm-svc.invalid:8000/v1"),
        ("http://vllm-svc.invalid:8000/", "http://vllm-svc.invalid:8000/v1"),
        ("http://vllm-svc.invalid:8000/v1", "http://vllm-svc.invalid:8000/v1"),
        ("http://vllm-svc.invalid:8000/v1/", "http://vllm-svc.invalid:8000/v1"),
        ("https://gw.invalid/llm", "https://gw.invalid/llm/v1"),
    ],
)
@pytest.mark.parametrize("cls", [ChatVLLMServer, VLLMServer])
def test_the_endpoint_is_a_root(
    monkeypatch: pytest.MonkeyPatch, cls: type, endpoint: str, base_url: str
) -> None:
    monkeypatch.setenv("LLM_MODEL_SERVER_ENDPOINT", endpoint)
    m = cls(model="m")
    assert m.base_url == base_url
    assert m._root == base_url.removesuffix("/v1")  # /health and /tokenize live at the root


def test_vllm_base_url_and_an_explicit_base_url_are_taken_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_MODEL_SERVER_ENDPOINT", "http://root.invalid:8000")
    monkeypatch.setenv("VLLM_BASE_URL", "http://other.invalid:9000/openai")
    assert ChatVLLMServer(model="m").base_url == "http://other.invalid:9000/openai"
    monkeypatch.delenv("VLLM_BASE_URL")
    explicit = ChatVLLMServer(model="m", base_url="http://x.invalid:1/custom")
    assert explicit.base_url == "http://x.invalid:1/custom"


def test_no_url_at_all_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="base_url"):
        ChatVLLMServer(model="m")
