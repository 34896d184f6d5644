"""The gateway in front of a second real peer: llama_cpp.server, reached through
``vllm-server:`` and a base_url, which these tests may kill mid-stream.

* a stream cut upstream after its first chunk ends with one ``error`` event and no ``[DONE]``,
  and the ``openai`` SDK raises instead of returning a cut answer as whole;
* a request over the window is refused before anything reaches the upstream;
* one call in flight, one waiting, the next refused with 429 and Retry-After; a client that
  goes away gives its slot back.

The upstream is kept generating with its end-of-sequence tokens banned (``logit_bias``), so a
stream lasts as long as a test needs whatever the model says.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests import peers
from tests.conftest import LOG_DIR
from tests.server.conftest import Gateway, start_gateway

pytestmark = pytest.mark.timeout(600)

# SmolLM2's <|endoftext|> and <|im_end|>: banned, the model writes until max_tokens.
NO_EOS = {"0": -100, "2": -100}
LONG = {"max_tokens": 1500, "logit_bias": NO_EOS}
HI = [{"role": "user", "content": "Say hi."}]
UPSTREAM_KEY = "relay-upstream-key-5150"


@dataclass
class Relay:
    gateway: Gateway
    port: int
    log: Path
    proc: object = None

    def start_peer(self) -> None:
        """llama_cpp.server as tests/peers.py starts it, with a key of its own."""
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", peers.smollm2_gguf_path(),
            "--model_alias", "smollm2",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", "2048",
            "--n_threads", "2",
            "--n_threads_batch", "2",
            "--api_key", UPSTREAM_KEY,
        ]  # fmt: skip
        proc = peers._popen(cmd, self.log)
        headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        deadline = time.monotonic() + 120
        while True:  # peers.wait_ready sends no key
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", headers=headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.5)
        self.proc = proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill_peer(self) -> None:
        """SIGKILL, mid-stream: no graceful end, the connection just breaks."""
        proc = self.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        proc.wait(timeout=30)  # type: ignore[attr-defined]
        self.proc = None

    def stop_peer(self) -> None:
        if self.proc is not None:
            peers.stop(self.proc)  # type: ignore[arg-type]
            self.proc = None

    def upstream_chats(self) -> int:
        """Chat requests the upstream has answered (its access log)."""
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions')


@pytest.fixture(scope="module")
def relay(
    server_deps: None, llama_cpp_available: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    port = peers.free_port()
    log = LOG_DIR / "relay_llama_cpp_server.log"
    log.unlink(missing_ok=True)
    params = {
        "base_url": f"http://127.0.0.1:{port}/v1",
        "context_window": 2048,
        "max_retries": 0,
        "api_key": "${oc.env:RELAY_UPSTREAM_KEY}",
    }
    config = {
        "server": {"startup_timeout_s": 5},
        "models": [
            {
                "name": "relay",
                "model": "vllm-server:smollm2",
                "params": {**params, "timeout": 300},
                "max_concurrency": 1,
                "max_queue": 1,
            },
            # the upstream refuses the gateway's own key: a 502, not the client's 401
            {
                "name": "relay-wrong-key",
                "model": "vllm-server:smollm2",
                "params": {**params, "api_key": "not-the-upstream-key"},
            },
            # the upstream cannot answer within the timeout: a 504
            {
                "name": "relay-impatient",
                "model": "vllm-server:smollm2",
                "params": {**params, "timeout": 0.01},
            },
        ],
    }
    r = Relay(gateway=None, port=port, log=log)  # type: ignore[arg-type]
    r.start_peer()
    try:
        r.gateway = start_gateway(
            config,
            tmp_path_factory.mktemp("relay") / "serve.yaml",
            name="relay",
            env={"RELAY_UPSTREAM_KEY": UPSTREAM_KEY},
        )
        try:
            yield r
        finally:
            peers.stop(r.gateway.proc)
    finally:
        r.stop_peer()


@pytest.fixture
def peer_up(relay: Relay) -> Relay:
    if relay.proc is None:
        relay.start_peer()
    return relay


def _metric(url: str, name: str, model: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(predicate: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_relay_answers(peer_up: Relay) -> None:
    client = openai.OpenAI(base_url=peer_up.gateway.v1, api_key="unused", max_retries=0)
    resp = client.chat.completions.create(model="relay", messages=HI, max_tokens=2)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens <= 2


def test_over_the_window_never_reaches_the_upstream(peer_up: Relay) -> None:
    url = peer_up.gateway.v1
    before = peer_up.upstream_chats()
    r = httpx.post(
        f"{url}/chat/completions",
        json={"model": "relay", "messages": HI, "max_tokens": 5000},
        timeout=120,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    time.sleep(0.5)
    assert peer_up.upstream_chats() == before
    ok = httpx.post(
        f"{url}/chat/completions",
        json={"model": "relay", "messages": HI, "max_tokens": 1},
        timeout=300,
    )
    assert ok.status_code == 200
    _wait_for(lambda: peer_up.upstream_chats() == before + 1, timeout=30)


def test_queue_then_429_then_a_gone_client_frees_its_slot(peer_up: Relay) -> None:
    url = peer_up.gateway.url
    body = {"model": "relay", "messages": HI, "stream": True, **LONG}
    waiting: dict[str, httpx.Response] = {}

    def second() -> None:
        waiting["r"] = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "relay", "messages": HI, "max_tokens": 1},
            timeout=600,
        )

    with (
        httpx.Client(timeout=600) as c,
        c.stream("POST", f"{url}/v1/chat/completions", json=body) as s1,
    ):
        assert s1.status_code == 200
        lines = s1.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # streaming now
        assert _metric(url, "multillm_in_flight", "relay") == 1
        t = threading.Thread(target=second)
        t.start()
        _wait_for(lambda: _metric(url, "multillm_queue_depth", "relay") == 1)
        third = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "relay", "messages": HI, "max_tokens": 1},
            timeout=60,
        )
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        err = third.json()["error"]
        assert (err["code"], err["type"]) == ("queue_full", "RateLimitError")
    # the first client went away: its stream is stopped and its slot given to the one waiting
    t.join(timeout=600)
    assert waiting["r"].status_code == 200, waiting["r"].text
    _wait_for(lambda: _metric(url, "multillm_in_flight", "relay") == 0, timeout=30)


def test_a_stream_cut_upstream_ends_with_an_error_event_and_no_done(peer_up: Relay) -> None:
    url = peer_up.gateway.url
    body = {"model": "relay", "messages": HI, "stream": True, **LONG}
    payloads: list[str] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            payloads.append(line[5:].strip())
            if len(payloads) == 2:
                peer_up.kill_peer()
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    assert set(last) == {"error"}
    assert last["error"]["type"] in ("BackendUnavailableError", "IncompleteResponseError")
    assert all("choices" in json.loads(p) for p in payloads[:-1])
    _wait_for(lambda: _metric(url, "multillm_in_flight", "relay") == 0, timeout=30)


def test_the_openai_sdk_raises_on_a_cut_stream(peer_up: Relay) -> None:
    client = openai.OpenAI(base_url=peer_up.gateway.v1, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="relay",
        messages=HI,  # type: ignore[arg-type]
        stream=True,
        max_tokens=1500,
        extra_body={"logit_bias": NO_EOS},
    )
    got: list[object] = []

    def consume() -> None:
        for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                peer_up.kill_peer()

    with pytest.raises(openai.APIError) as err:
        consume()
    assert len(got) >= 2
    body = err.value.body
    assert isinstance(body, dict)
    assert body["type"] in ("BackendUnavailableError", "IncompleteResponseError")


def test_the_upstream_refusing_the_gateways_key_is_a_502(peer_up: Relay) -> None:
    r = httpx.post(
        f"{peer_up.gateway.v1}/chat/completions",
        json={"model": "relay-wrong-key", "messages": HI, "max_tokens": 1},
        timeout=120,
    )
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("AuthenticationError", "upstream_authentication_failed")
    assert UPSTREAM_KEY not in r.text and "not-the-upstream-key" not in r.text
    ready = httpx.get(f"{peer_up.gateway.url}/ready", params={"model": "relay-wrong-key"})
    assert ready.status_code == 503
    assert "not-the-upstream-key" not in ready.text


def test_an_upstream_timeout_is_a_504(peer_up: Relay) -> None:
    r = httpx.post(
        f"{peer_up.gateway.v1}/chat/completions",
        json={"model": "relay-impatient", "messages": HI, **LONG, "max_tokens": 200},
        timeout=120,
    )
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "BackendTimeoutError"


def test_down_upstream_is_a_503_and_not_ready(relay: Relay) -> None:
    relay.stop_peer()
    url = relay.gateway.url
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "relay", "messages": HI, "max_tokens": 1},
        timeout=120,
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "BackendUnavailableError"
    ready = httpx.get(f"{url}/ready", params={"model": "relay"}, timeout=60)
    assert ready.status_code == 503
    assert ready.json()["models"]["relay"]["alive"] is False
