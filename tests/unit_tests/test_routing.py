"""ChatRouter's state machine: fit before sending, breakers, strategies, failover (fake models).

The fakes are models of this package (their fit gate, bounds and exact count are the real
ones from ``_base``); the real peers are in tests/integration_tests/test_routing_llamacpp.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr, ValidationError

from langchain_multillm import ChatRouter
from langchain_multillm._base import ChatRequest, MultiLLMChatModel, Prompt
from langchain_multillm.errors import (
    AuthenticationError,
    BackendUnavailableError,
    BadRequestError,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    RateLimitError,
)
from langchain_multillm.fit import Limits, chat_bound
from langchain_multillm.health import HealthReport
from tests.unit_tests.chain_fakes import EchoChat


class Fake(MultiLLMChatModel):
    """A model whose tokenizer makes one token of every 4 bytes. ``fail`` is raised by the next
    calls (``fail_times`` of them, -1: every call); ``cut`` is raised after the first chunk of
    a stream; ``alive`` is what its free health check says; it counts what it is asked."""

    model_name: str = "fake"
    window: int = 1000
    alive: bool = True
    fail: Any = None
    fail_times: int = -1
    cut: Any = None
    hold: Any = None
    _sent: int = PrivateAttr(default=0)
    _exact: int = PrivateAttr(default=0)
    _health_checks: int = PrivateAttr(default=0)
    _attempts: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "fake"

    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.window)

    def _count_bound(self, prompt: Prompt) -> int | None:
        return chat_bound(prompt, None)

    def _max_token_bytes(self) -> int | None:
        return 4

    def _count_exact(self, prompt: Prompt) -> int | None:
        self._exact += 1
        text = "".join(str(m.content) for m in prompt.messages or []) + (prompt.text or "")
        return -(-len(text.encode()) // 4) + 3

    def _health(self) -> HealthReport:
        self._health_checks += 1
        return HealthReport(alive=self.alive, ready=self.alive, latency_s=0.0, model="fake")

    def _attempt(self) -> None:
        with self._lock:
            self._attempts += 1
            if self.fail is not None and self.fail_times != 0:
                self.fail_times -= 1
                raise self.fail
            self._sent += 1
        if self.hold is not None:
            self.hold.wait(10)

    def _chat(self, req: ChatRequest) -> ChatResult:
        self._attempt()
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.model_name))])

    async def _achat(self, req: ChatRequest) -> ChatResult:
        return self._chat(req)

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        self._attempt()
        yield ChatGenerationChunk(message=AIMessageChunk(content=self.model_name))
        if self.cut is not None:
            raise self.cut
        yield ChatGenerationChunk(message=AIMessageChunk(content="!"))

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chat_stream(req):
            yield chunk


def down() -> BackendUnavailableError:
    return BackendUnavailableError("connection refused")


def by_name(router: ChatRouter) -> dict[str, Any]:
    return {s.name: s for s in router.state()}


def routed(msg: Any) -> str:
    return msg.response_metadata["router_candidate"]


# ---- construction ----


def test_bad_settings_are_refused_naming_the_field() -> None:
    with pytest.raises((InvalidInputError, ValidationError), match="models"):
        ChatRouter(models=[])
    with pytest.raises((InvalidInputError, ValidationError), match="weights"):
        ChatRouter(models=[Fake(), Fake()], weights=[1.0])
    with pytest.raises((InvalidInputError, ValidationError), match="weights"):
        ChatRouter(models=[Fake()], weights=[0])
    with pytest.raises((InvalidInputError, ValidationError), match="strategy"):
        ChatRouter(models=[Fake()], strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises((InvalidInputError, ValidationError), match="names"):
        ChatRouter(models=[Fake(), Fake()], names=["a", "a"])
    with pytest.raises((InvalidInputError, ValidationError), match="models\\[1\\]"):
        ChatRouter(models=[Fake(), "not a model"])


# ---- strategies ----


def test_ordered_is_a_fallback_chain() -> None:
    a, b = Fake(model_name="a"), Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="ordered")
    for _ in range(3):
        assert routed(router.invoke("hi")) == "0:a"
    assert (a._sent, b._sent) == (3, 0)


def test_round_robin_takes_turns() -> None:
    models = [Fake(model_name=n) for n in "abc"]
    router = ChatRouter(models=models, strategy="round_robin")
    got = [routed(router.invoke("hi")) for _ in range(6)]
    assert got == ["0:a", "1:b", "2:c", "0:a", "1:b", "2:c"]


def test_weighted_is_smooth_and_proportional() -> None:
    a, b = Fake(model_name="a"), Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="weighted", weights=[3, 1], names=["a", "b"])
    got = [routed(router.invoke("hi")) for _ in range(8)]
    assert got.count("a") == 6 and got.count("b") == 2
    assert "b" in got[:4] and "b" in got[4:]  # spread, not a burst


def test_least_busy_goes_where_fewest_calls_are_in_flight() -> None:
    gate = threading.Event()
    a, b = Fake(model_name="a", hold=gate), Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="least_busy", names=["a", "b"])
    worker = threading.Thread(target=router.invoke, args=("hi",))
    worker.start()
    deadline = time.monotonic() + 5
    while by_name(router)["a"].in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert [routed(router.invoke("hi")) for _ in range(3)] == ["b", "b", "b"]
    gate.set()
    worker.join()
    assert by_name(router)["a"].in_flight == 0


# ---- fit, before anything is sent ----


def test_a_long_prompt_goes_to_the_larger_window_with_no_request_to_the_smaller() -> None:
    small, large = Fake(model_name="small", window=100), Fake(model_name="large", window=10_000)
    router = ChatRouter(models=[small, large], strategy="ordered")
    msg = router.invoke("a" * 2000, max_tokens=10)
    assert routed(msg) == "1:large"
    # the small one's lower bound (2000 bytes / 4) refused it: no request, no exact count
    assert (small._attempts, small._exact) == (0, 0)
    # the large one's upper bound proved the fit: no exact count either
    assert large._exact == 0 and large._sent == 1


def test_the_exact_count_runs_once_and_only_where_the_bounds_straddle() -> None:
    small = Fake(model_name="small", window=200)
    router = ChatRouter(models=[small], strategy="ordered")
    # 400 bytes: upper bound 400 + 144 > 200, lower bound 100 < 200: counted, 103 + 10 fits
    router.invoke("a" * 400, max_tokens=10)
    assert small._exact == 1 and small._sent == 1


def test_none_fits_names_each_candidates_limit() -> None:
    a, b = Fake(model_name="a", window=100), Fake(model_name="b", window=300)
    router = ChatRouter(models=[a, b])
    with pytest.raises(ContextWindowExceededError) as info:
        router.invoke("a" * 8000)
    text = str(info.value)
    assert "0:a: limit 100" in text and "1:b: limit 300" in text
    assert info.value.limit == 300
    assert a._attempts == b._attempts == 0


def test_check_fit_count_tokens_and_limits_answer_for_the_chosen_candidate() -> None:
    small, large = Fake(model_name="small", window=100), Fake(model_name="large", window=10_000)
    router = ChatRouter(models=[small, large], strategy="ordered")
    assert router.check_fit("hi").context_window == 100
    assert router.check_fit("a" * 2000).context_window == 10_000
    assert not router.check_fit("a" * 80_000).fits
    assert router.count_tokens("a" * 2000) == large.count_tokens("a" * 2000)
    assert router.get_limits().context_window == 10_000
    assert router.profile is not None


def test_context_overflow_ignore_still_routes_by_fit_and_sends_when_none_fits() -> None:
    small, large = Fake(model_name="small", window=100), Fake(model_name="large", window=300)
    router = ChatRouter(models=[small, large], strategy="ordered", names=["small", "large"])
    # fits the large one only: routed there even though the caller said "ignore"
    assert routed(router.invoke("a" * 600, context_overflow="ignore")) == "large"
    assert small._attempts == 0
    # fits neither: sent anyway, as asked, to the first in the order (its backend judges)
    assert routed(router.invoke("a" * 8000, context_overflow="ignore")) == "small"
    with pytest.raises(ContextWindowExceededError):
        router.invoke("a" * 8000)


async def test_exact_counts_are_the_chosen_candidates() -> None:
    small, large = Fake(model_name="small", window=100), Fake(model_name="large", window=10_000)
    router = ChatRouter(models=[small, large], strategy="ordered")
    assert router.count_tokens_exact("a" * 2000) == 2000 // 4 + 3
    assert await router.acount_tokens_exact("hi") == 4
    assert await router.acount_tokens("a" * 2000) == 503
    assert (await router.acheck_fit("a" * 2000)).context_window == 10_000
    assert (await router.aget_limits()).context_window == 10_000


# ---- breakers ----


def test_breaker_opens_after_n_consecutive_failures_and_passes_the_candidate_over() -> None:
    a, b = Fake(model_name="a", fail=down()), Fake(model_name="b")
    router = ChatRouter(
        models=[a, b], strategy="ordered", failure_threshold=2, backoff_s=0, names=["a", "b"]
    )
    assert routed(router.invoke("hi")) == "b"
    assert by_name(router)["a"].breaker == "closed"
    assert routed(router.invoke("hi")) == "b"
    state = by_name(router)["a"]
    assert state.breaker == "open" and state.consecutive_failures == 2
    assert state.last_error == "BackendUnavailableError" and state.times_opened == 1
    assert state.reopens_in_s is not None and state.reopens_in_s > 0
    for _ in range(3):
        assert routed(router.invoke("hi")) == "b"
    assert a._attempts == 2  # never tried again while open


def test_an_open_breaker_closes_after_its_cooldown_by_a_health_check_not_a_generation() -> None:
    a, b = Fake(model_name="a", fail=down(), alive=False), Fake(model_name="b")
    router = ChatRouter(
        models=[a, b], strategy="ordered", failure_threshold=1, cooldown_s=0.2, backoff_s=0,
        names=["a", "b"],
    )  # fmt: skip
    router.invoke("hi")
    assert by_name(router)["a"].breaker == "open"
    time.sleep(0.25)
    router.invoke("hi")  # the probe says not alive: open for another cooldown, nothing sent
    assert a._health_checks == 1 and a._attempts == 1
    assert by_name(router)["a"].breaker == "open"
    a.alive, a.fail = True, None
    router.invoke("hi")  # still in its second cooldown
    assert a._health_checks == 1
    time.sleep(0.25)
    assert routed(router.invoke("hi")) == "a"  # probe passed: closed, back in rotation
    assert a._health_checks == 2 and a._attempts == 2
    assert by_name(router)["a"].breaker == "closed"


def test_health_opens_the_breaker_of_a_candidate_not_alive_and_is_ready_when_any_is() -> None:
    a, b = Fake(model_name="a", alive=False), Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="ordered", names=["a", "b"])
    report = router.health()
    assert report.alive and report.ready
    assert "a: down" in report.detail
    assert by_name(router)["a"].breaker == "open"
    assert "down" in (by_name(router)["a"].last_health or "")
    assert routed(router.invoke("hi")) == "b" and a._attempts == 0
    b.alive = False
    assert not router.health().ready


def test_every_breaker_open_is_a_retryable_unavailable_error() -> None:
    a = Fake(model_name="a", alive=False)
    router = ChatRouter(models=[a], cooldown_s=60)
    router.health()
    with pytest.raises(BackendUnavailableError) as info:
        router.invoke("hi")
    assert info.value.is_retryable and info.value.retry_after is not None
    assert info.value.retry_after > 50


def test_non_retryable_errors_are_raised_at_once() -> None:
    for error in (BadRequestError("bad", status_code=400), AuthenticationError("no")):
        a, b = Fake(model_name="a", fail=error), Fake(model_name="b")
        router = ChatRouter(models=[a, b], strategy="ordered", names=["a", "b"])
        with pytest.raises(type(error)):
            router.invoke("hi")
        assert b._attempts == 0
        state = by_name(router)["a"]
        assert state.consecutive_failures == 0 and state.last_error == type(error).__name__


def test_bad_input_is_refused_before_sending() -> None:
    a = Fake(model_name="a")
    router = ChatRouter(models=[a])
    with pytest.raises(InvalidInputError, match="temprature"):
        router.invoke("hi", temprature=0.5)
    assert a._attempts == 0 and by_name(router)["0:a"].in_flight == 0


def test_retries_are_bounded_and_the_last_error_raised() -> None:
    a, b = Fake(model_name="a", fail=down()), Fake(model_name="b", fail=RateLimitError("busy"))
    router = ChatRouter(models=[a, b], strategy="ordered", max_retries=3, backoff_s=0)
    with pytest.raises((BackendUnavailableError, RateLimitError)):
        router.invoke("hi")
    assert a._attempts + b._attempts == 4


# ---- streams ----


def test_a_failure_before_the_first_token_moves_the_stream_on() -> None:
    a, b = Fake(model_name="a", fail=down()), Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="ordered", backoff_s=0, names=["a", "b"])
    chunks = list(router.stream("hi"))
    assert "".join(str(c.content) for c in chunks) == "b!"
    assert chunks[0].response_metadata["router_candidate"] == "b"
    assert by_name(router)["b"].in_flight == 0


def test_after_the_first_token_the_streams_error_is_raised_as_it_is() -> None:
    a = Fake(model_name="a", cut=IncompleteResponseError("cut"))
    b = Fake(model_name="b")
    router = ChatRouter(models=[a, b], strategy="ordered", names=["a", "b"])
    got: list[Any] = []

    def read() -> None:
        for chunk in router.stream("hi"):
            got.append(chunk.content)

    with pytest.raises(IncompleteResponseError, match="cut"):
        read()
    assert got == ["a"] and b._attempts == 0
    state = by_name(router)["a"]
    assert state.in_flight == 0 and state.failures == 1


def test_a_stream_left_unread_gives_its_slot_back() -> None:
    a = Fake(model_name="a")
    router = ChatRouter(models=[a], names=["a"])
    stream = router.stream("hi")
    next(stream)
    assert by_name(router)["a"].in_flight == 1
    stream.close()
    assert by_name(router)["a"].in_flight == 0


# ---- async ----


async def test_async_failover_breaker_and_streams() -> None:
    a, b = Fake(model_name="a", fail=down()), Fake(model_name="b")
    router = ChatRouter(
        models=[a, b], strategy="ordered", failure_threshold=2, backoff_s=0, names=["a", "b"]
    )
    assert routed(await router.ainvoke("hi")) == "b"
    chunks = [c async for c in router.astream("hi")]
    assert "".join(str(c.content) for c in chunks) == "b!"
    assert by_name(router)["a"].breaker == "open"
    report = await router.ahealth()
    assert report.ready
    b.cut = BackendUnavailableError("reset")
    got: list[Any] = []

    async def read() -> None:
        async for chunk in router.astream("hi"):
            got.append(chunk.content)

    with pytest.raises(BackendUnavailableError, match="reset"):
        await read()
    assert got == ["b"]
    assert all(s.in_flight == 0 for s in router.state())


async def test_async_concurrent_calls_keep_counts_straight() -> None:
    models = [Fake(model_name=n) for n in "abc"]
    router = ChatRouter(models=models, strategy="round_robin")
    results = await asyncio.gather(*(router.ainvoke("hi") for _ in range(60)))
    assert len(results) == 60
    assert [m._sent for m in models] == [20, 20, 20]
    assert all(s.in_flight == 0 and s.calls == 20 for s in router.state())


def test_threads_keep_counts_straight() -> None:
    models = [Fake(model_name=n) for n in "abcd"]
    router = ChatRouter(models=models, strategy="least_busy")

    def work() -> None:
        for _ in range(25):
            router.invoke("hi")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(m._sent for m in models) == 200
    assert all(s.in_flight == 0 for s in router.state())
    assert sum(s.calls for s in router.state()) == 200


# ---- wrapped and foreign models ----


def test_bound_and_wrapped_models_are_candidates() -> None:
    small = Fake(model_name="small", window=100)
    large = Fake(model_name="large", window=10_000)
    # bind: the bound max_tokens counts in the fit check (80 bytes + 90 > 100 for the small)
    router = ChatRouter(models=[small.bind(max_tokens=90), large], strategy="ordered")
    assert routed(router.invoke("a" * 80)) == "1:large" and small._attempts == 0
    # with_retry: called through invoke, its first model's limits still checked beforehand
    retried = Fake(model_name="retried").with_retry(stop_after_attempt=1)
    router = ChatRouter(models=[retried, large], strategy="ordered", names=["r", "l"])
    assert routed(router.invoke("hi")) == "r"
    assert routed(router.invoke("a" * 8000)) == "l"


def test_a_foreign_model_is_assumed_to_fit_and_called_through_invoke() -> None:
    echo = EchoChat(reply="echo")
    small = Fake(model_name="small", window=100)
    router = ChatRouter(models=[small, echo], strategy="ordered", names=["small", "echo"])
    msg = router.invoke("a" * 2000)
    assert routed(msg) == "echo" and msg.content == "echo"
    chunks = list(router.stream("a" * 2000))
    assert "".join(str(c.content) for c in chunks) == "echo"
    assert router.health().ready


def test_a_router_of_routers_routes_by_fit_and_shows_nested_state() -> None:
    a, b = Fake(model_name="a", window=100, fail=down()), Fake(model_name="b", window=100)
    big = Fake(model_name="big", window=10_000)
    replicas = ChatRouter(models=[a, b], names=["a", "b"], backoff_s=0)
    router = ChatRouter(models=[replicas, big], names=["main", "big"], strategy="ordered")
    assert routed(router.invoke("hi")) == "main"  # answered by b inside
    assert routed(router.invoke("a" * 2000)) == "big" and b._sent == 1
    names = [s.name for s in router.state(nested=True)]
    assert names == ["main", "main/a", "main/b", "big"]
    assert router.check_fit("hi").context_window == 100
    assert router.health().ready


class Slow(Fake):
    async def _achat(self, req: ChatRequest) -> ChatResult:
        await asyncio.sleep(30)
        return self._chat(req)


async def test_a_cancelled_call_gives_its_slot_back() -> None:
    router = ChatRouter(models=[Slow(model_name="slow")], names=["slow"])
    task = asyncio.create_task(router.ainvoke("hi"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if by_name(router)["slow"].in_flight == 1:
            break
    assert by_name(router)["slow"].in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = by_name(router)["slow"]
    assert state.in_flight == 0 and state.consecutive_failures == 0 and state.breaker == "closed"
