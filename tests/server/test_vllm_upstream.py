"""The gateway in front of the real vLLM CPU server (``make test-vllm``: these tests carry the
``vllm_server`` marker, not ``server``, so they run in that tier only).

One gateway serves the embedded llama.cpp model and vLLM (through ``vllm-server:``). It is
spoken to with the ``openai`` SDK (plain and streamed), and this package's ``ChatVLLMServer``
pointed at the gateway gets exact counts through the gateway's ``/tokenize`` that equal vLLM's
own. Few tokens: only shapes, counts and finish reasons are asserted, never the words.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests import peers
from tests.server.conftest import KEY, Gateway, embedded, start_gateway

pytestmark = [pytest.mark.vllm_server, pytest.mark.timeout(600)]

HI = [{"role": "user", "content": "Say hi."}]
MESSAGES = [("system", "You are terse."), ("user", "Count the tokens of this, exactly.")]


@pytest.fixture(scope="module")
def vllm_gateway(
    server_deps: None,
    llama_cpp_available: str,
    vllm_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """A gateway with a key serving ``vllm`` (the vLLM CPU server) and ``smollm2`` (embedded)."""
    upstream = {
        "name": "vllm",
        "model": f"vllm-server:{peers.SERVED_MODEL_NAME}",
        "params": {"base_url": vllm_server_url, "max_retries": 0, "temperature": 0},
    }
    config = {"server": {"api_keys": [KEY]}, "models": [upstream, embedded()]}
    gw = start_gateway(config, tmp_path_factory.mktemp("vllm-gw") / "serve.yaml", name="vllm_gw")
    try:
        yield gw
    finally:
        peers.stop(gw.proc)


def vllm_count(vllm_server_url: str, body: dict) -> int:
    """vLLM's own count (its /tokenize, asked directly)."""
    root = vllm_server_url.removesuffix("/v1")
    r = httpx.post(f"{root}/tokenize", json={"model": peers.SERVED_MODEL_NAME, **body}, timeout=60)
    r.raise_for_status()
    return int(r.json()["count"])


def test_openai_sdk_plain_and_streamed(vllm_gateway: Gateway, vllm_server_url: str) -> None:
    sdk = openai.OpenAI(base_url=vllm_gateway.v1, api_key=KEY, max_retries=0, timeout=300)
    prompt_tokens = vllm_count(vllm_server_url, {"messages": HI, "add_generation_prompt": True})

    whole = sdk.chat.completions.create(model="vllm", messages=HI, max_tokens=3)
    assert whole.model == "vllm" and whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert isinstance(whole.choices[0].message.content, str)
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 3
    assert whole.usage.prompt_tokens == prompt_tokens  # vLLM's usage, passed on

    stream = sdk.chat.completions.create(
        model="vllm",
        messages=HI,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens == prompt_tokens and 0 < usage.completion_tokens <= 3

    # the fit check refuses before vLLM is asked: a 400, not vLLM's own refusal
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="vllm", messages=HI, max_tokens=5000)
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "context_length_exceeded"


def test_chat_vllm_server_through_the_gateway_counts_as_vllm_does(
    vllm_gateway: Gateway, vllm_server_url: str
) -> None:
    from langchain_multillm import ChatVLLMServer

    remote = ChatVLLMServer(base_url=vllm_gateway.v1, model="vllm", api_key=KEY, max_tokens=2)
    direct = ChatVLLMServer(base_url=vllm_server_url, model=peers.SERVED_MODEL_NAME)
    n = direct.count_tokens(MESSAGES)
    as_dicts = [{"role": role, "content": text} for role, text in MESSAGES]
    assert n == vllm_count(vllm_server_url, {"messages": as_dicts, "add_generation_prompt": True})
    assert remote.count_tokens(MESSAGES) == n
    text = "plain text prompt"
    assert remote.count_tokens(text) == vllm_count(vllm_server_url, {"prompt": text})
    window = remote.get_limits().context_window
    assert window == peers.CONTEXT_WINDOW
    tight = remote.check_fit(MESSAGES, max_tokens=window - n)  # the bound cannot decide this
    assert (tight.fits, tight.exact, tight.prompt_tokens) == (True, True, n)
    over = remote.check_fit(MESSAGES, max_tokens=window - n + 1)
    assert (over.fits, over.prompt_tokens) == (False, n)
    answer = remote.invoke(MESSAGES)
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] == n
    assert answer.response_metadata["finish_reason"] in ("stop", "length")


def test_both_models_ready(vllm_gateway: Gateway) -> None:
    r = httpx.get(f"{vllm_gateway.url}/ready", timeout=60)
    assert r.status_code == 200, r.text
    models = r.json()["models"]
    assert models["vllm"]["ready"] and models["vllm"]["context_window"] == peers.CONTEXT_WINDOW
    assert models["smollm2"]["ready"]
