"""ChatVLLMServer when ``/tokenize`` answers 501 (the gateway ``multillm serve`` for a model it
cannot count exactly): no exact count here, the bounds decide; never a failure, never a guess.
The end-to-end twin, through a real gateway, is tests/server/test_tokenize_exact.py."""

import json

import httpx
import pytest

from langchain_multillm import ChatVLLMServer

from .fake_server import FakeServer, chunk, sse

NOT_EXACT = {
    "error": {
        "message": "'m' cannot count tokens exactly here",
        "type": "ExactCountUnavailableError",
        "param": None,
        "code": "not_implemented",
    }
}


class TextOnlyCounter(FakeServer):
    """Counts raw text exactly (so the availability probe says yes), answers 501 to messages."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize" and "messages" in json.loads(request.content):
            self.calls["/tokenize 501"] += 1
            return httpx.Response(501, json=NOT_EXACT)
        return super().handler(request)


def test_the_probe_asks_about_the_configured_model() -> None:
    seen: list[dict] = []
    fake = FakeServer(window=100)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            seen.append(json.loads(request.content))
        return fake.handler(request)

    transport = httpx.MockTransport(handler)
    m = ChatVLLMServer(
        model="m",
        base_url=fake.clients()["base_url"],
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )
    assert m.count_tokens("abc") == 3
    assert seen[0] == {"model": "m", "prompt": "a"}


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_501_is_no_exact_count_not_a_failure(asynchronous: bool) -> None:
    fake = TextOnlyCounter(window=100)
    m = ChatVLLMServer(model="m", max_retries=0, **fake.clients())
    near = [("user", "x" * 60)]  # bytes + template allowance > 100: the bound cannot decide
    if asynchronous:
        report = await m.acheck_fit(near, max_tokens=10)
    else:
        report = m.check_fit(near, max_tokens=10)
    assert fake.calls["/tokenize 501"] >= 1
    assert (report.fits, report.exact, report.counted) == (True, False, "range")
    # From then on the bounds answer, without asking again.
    asked = fake.calls["/tokenize 501"]
    count = await m.acount_tokens(near) if asynchronous else m.count_tokens(near)
    assert count >= 60
    assert fake.calls["/tokenize 501"] == asked


def test_stream_usage_is_not_guessed_when_the_server_cannot_count() -> None:
    fake = TextOnlyCounter(window=1000)
    fake.chat = [
        httpx.Response(
            200,
            content=sse([chunk("hi"), chunk(finish="stop")]),
            headers={"content-type": "text/event-stream"},
        )
    ]
    m = ChatVLLMServer(model="m", max_retries=0, stream_usage=True, **fake.clients())
    chunks = list(m.stream("hello"))
    assert "".join(str(c.content) for c in chunks) == "hi"
    assert all(c.usage_metadata is None for c in chunks)
