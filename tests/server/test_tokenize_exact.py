"""``/tokenize`` answers exact counts only: a gateway serving the embedded model (exact) and a
``vllm-server:`` model over llama_cpp.server, which has no ``/tokenize`` (bounds only). The
bounded model's ``/tokenize`` is a 501 in OpenAI's error shape, and ``ChatVLLMServer`` pointed
at the gateway takes that as "no exact count here": its bounds decide, a prompt they cannot
decide is sent (``counted="range"``), and nothing fails."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests import peers
from tests.server.conftest import Gateway, embedded, start_gateway

pytestmark = pytest.mark.timeout(300)

MESSAGES = [("system", "You are terse."), ("user", "Count the tokens of this.")]


@pytest.fixture(scope="module")
def gw(
    server_deps: None, llama_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    bounded = {
        "name": "bounded",
        "model": f"vllm-server:{peers.SERVED_MODEL_NAME}",
        "params": {
            "base_url": llama_server_url,
            "context_window": peers.CONTEXT_WINDOW,
            "max_retries": 0,
            "max_tokens": 2,
            "temperature": 0,
        },
    }
    config = {"models": [embedded("exact"), bounded]}
    gateway = start_gateway(config, tmp_path_factory.mktemp("tok") / "serve.yaml", name="tokenize")
    try:
        yield gateway
    finally:
        peers.stop(gateway.proc)


def test_a_bound_is_never_answered_as_a_count(gw: Gateway) -> None:
    for body in (
        {"model": "bounded", "prompt": "Hello world"},
        {"model": "bounded", "messages": [{"role": "user", "content": "Hello"}]},
    ):
        r = httpx.post(f"{gw.url}/tokenize", json=body, timeout=60)
        assert r.status_code == 501, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("ExactCountUnavailableError", "not_implemented")
        assert "'bounded'" in error["message"] and "exact" in error["message"]
    r = httpx.post(f"{gw.url}/tokenize", json={"model": "exact", "prompt": "Hello world"})
    assert r.status_code == 200 and r.json()["max_model_len"] == peers.CONTEXT_WINDOW


async def test_chat_vllm_server_falls_back_to_its_bounds(gw: Gateway) -> None:
    from langchain_multillm import ChatLlamaCpp, ChatVLLMServer

    n = ChatLlamaCpp(n_threads=2).count_tokens(MESSAGES)  # the true count
    exact = ChatVLLMServer(base_url=gw.v1, model="exact", max_retries=0)
    assert exact.count_tokens(MESSAGES) == n
    tight = exact.check_fit(MESSAGES, max_tokens=peers.CONTEXT_WINDOW - n)
    assert (tight.fits, tight.exact, tight.prompt_tokens) == (True, True, n)

    for asynchronous in (False, True):
        remote = ChatVLLMServer(base_url=gw.v1, model="bounded", max_retries=0, max_tokens=2)
        if asynchronous:
            assert (await remote.aget_limits()).context_window == peers.CONTEXT_WINDOW
            bound = await remote.acount_tokens(MESSAGES)
            report = await remote.acheck_fit(MESSAGES, max_tokens=peers.CONTEXT_WINDOW - n)
        else:
            assert remote.get_limits().context_window == peers.CONTEXT_WINDOW
            bound = remote.count_tokens(MESSAGES)
            report = remote.check_fit(MESSAGES, max_tokens=peers.CONTEXT_WINDOW - n)
        assert bound > n  # a proven upper bound, never an under-count
        assert (report.fits, report.exact, report.counted) == (True, False, "range")
        assert report.prompt_tokens_min is not None and report.prompt_tokens_min <= n <= bound
        over = remote.check_fit(MESSAGES, max_tokens=peers.CONTEXT_WINDOW + 1)
        assert not over.fits  # over the window whatever the count: refused without one
    answer = remote.invoke(MESSAGES)
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
