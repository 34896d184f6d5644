"""ChatAzureOpenAI against the Azure OpenAI protocol fixture (SmolLM2 behind the 2024-10-21
API, every request and response validated against Azure's spec)."""

from __future__ import annotations

import httpx
import pytest
from langchain_core.messages import HumanMessage

from langchain_multillm import (
    AuthenticationError,
    ChatAzureOpenAI,
    ContentFilteredError,
    ModelNotFoundError,
)
from langchain_multillm.backends.azure import count_chat_tokens
from tests import peers

pytestmark = [pytest.mark.azure, pytest.mark.timeout(300)]


def make(url: str, **kw: object) -> ChatAzureOpenAI:
    kw.setdefault("api_key", peers.AZURE_FIXTURE_KEY)
    kw.setdefault("azure_deployment", peers.AZURE_DEPLOYMENT)
    kw.setdefault("max_tokens", 16)
    return ChatAzureOpenAI(
        azure_endpoint=url, api_version=peers.AZURE_API_VERSION, temperature=0,
        max_retries=0, **kw,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_violations(azure_server_url: str):  # type: ignore[no-untyped-def]
    yield
    httpx.post(f"{azure_server_url}/__fixture__/reset")
    assert httpx.get(f"{azure_server_url}/__fixture__/violations").json() == []


def test_invoke_stream_parity_with_filters_and_exact_usage(azure_server_url: str) -> None:
    llm = make(azure_server_url)
    msg = llm.invoke("Say hello.")
    assert msg.content and msg.response_metadata["finish_reason"] in ("stop", "length")
    assert msg.response_metadata["prompt_filter_results"][0]["content_filter_results"]
    assert msg.response_metadata["content_filter_results"]["hate"]["filtered"] is False
    # The fixture counts usage as the deployed model would; our exact count agrees.
    assert msg.usage_metadata and msg.usage_metadata["input_tokens"] == llm.count_tokens(
        [HumanMessage("Say hello.")]
    )
    chunks = list(llm.stream("Say hello."))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == msg.content
    assert total.usage_metadata == msg.usage_metadata
    assert (
        total.response_metadata["prompt_filter_results"]
        == msg.response_metadata["prompt_filter_results"]
    )


async def test_async_parity(azure_server_url: str) -> None:
    llm = make(azure_server_url)
    a = await llm.ainvoke("Say hello.")
    assert a.content == llm.invoke("Say hello.").content
    chunks = [c async for c in llm.astream("Say hello.")]
    assert "".join(str(c.content) for c in chunks) == a.content


def test_filtered_output_and_prompt_raise(azure_server_url: str) -> None:
    llm = make(azure_server_url)
    httpx.post(f"{azure_server_url}/__fixture__/filter", json={"output": 2})
    with pytest.raises(ContentFilteredError) as info:
        llm.invoke("Say hello.")
    assert info.value.filter_results["content_filter_results"]["violence"]["filtered"]
    with pytest.raises(ContentFilteredError):
        list(llm.stream("Say hello."))
    httpx.post(f"{azure_server_url}/__fixture__/filter", json={"prompt": 1})
    with pytest.raises(ContentFilteredError) as info:
        llm.invoke("Say hello.")
    assert info.value.status_code == 400 and info.value.filter_results["prompt"]


def test_azure_rules(azure_server_url: str) -> None:
    with pytest.raises(AuthenticationError):
        make(azure_server_url, api_key="wrong").invoke("hi")
    with pytest.raises(ModelNotFoundError):
        make(azure_server_url, azure_deployment="nope", model="gpt-4o").invoke("hi")
    no_version = httpx.post(f"{azure_server_url}/openai/deployments/gpt-4o/chat/completions",
                            headers={"api-key": peers.AZURE_FIXTURE_KEY},
                            json={"messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert no_version.status_code == 404
    unknown = httpx.post(
        f"{azure_server_url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        headers={"api-key": peers.AZURE_FIXTURE_KEY},
        json={"messages": [{"role": "user", "content": "x"}], "no_such_field": {}},
    )
    assert unknown.status_code == 400 and "Unrecognized" in unknown.json()["error"]["message"]
    # stream_options came with 2024-08-01-preview / 2024-10-21: older versions refuse it.
    old = httpx.post(
        f"{azure_server_url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
        headers={"api-key": peers.AZURE_FIXTURE_KEY},
        json={"messages": [{"role": "user", "content": "x"}], "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    assert old.status_code == 400
    assert (
        old.json()["error"]["message"] == "Unrecognized request argument supplied: stream_options"
    )


def test_stream_usage_from_azure_where_the_version_takes_stream_options(
    azure_server_url: str,
) -> None:
    """2024-10-21 asks for the usage chunk (as AzureChatOpenAI does); 2024-06-01 cannot, and the
    usage is counted with tiktoken instead; the fixture's own count agrees with both."""
    for version in ("2024-10-21", "2024-06-01"):
        httpx.delete(f"{azure_server_url}/__fixture__/requests")
        llm = ChatAzureOpenAI(
            azure_endpoint=azure_server_url, api_version=version, temperature=0, max_tokens=12,
            api_key=peers.AZURE_FIXTURE_KEY, azure_deployment=peers.AZURE_DEPLOYMENT,
            max_retries=0,
        )  # fmt: skip
        msg = llm.invoke("Say hello.")
        chunks = list(llm.stream("Say hello."))
        total = chunks[0]
        for c in chunks[1:]:
            total = total + c
        assert total.content == msg.content and total.usage_metadata == msg.usage_metadata
        sent = httpx.get(f"{azure_server_url}/__fixture__/requests").json()
        streamed = [r["json"] for r in sent if r["json"] and r["json"].get("stream")]
        if version == "2024-10-21":
            assert streamed[-1]["stream_options"] == {"include_usage": True}
        else:
            assert "stream_options" not in streamed[-1]


def test_health(azure_server_url: str) -> None:
    llm = make(azure_server_url, health_timeout=60)
    shallow = llm.health()
    assert shallow.alive and not shallow.ready and "deep=True" in shallow.detail
    deep = llm.health(deep=True)
    assert deep.alive and deep.ready and deep.context_window == 128_000
    assert not make(azure_server_url, api_key="wrong").health(deep=True).ready
    assert (
        not make(azure_server_url, azure_deployment="nope", model="gpt-4o").health(deep=True).ready
    )


def test_counts_equal_fixture_usage_with_names_and_system(azure_server_url: str) -> None:
    llm = make(azure_server_url, max_tokens=4)
    msgs = [("system", "You are terse."), ("human", "Name a colour.")]
    out = llm.invoke(msgs)
    expected = count_chat_tokens(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
        ],
        "o200k_base",
    )[0]
    assert out.usage_metadata and out.usage_metadata["input_tokens"] == expected
    assert llm.count_tokens(msgs) == expected
