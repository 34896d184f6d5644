"""ChatLlamaCpp / LlamaCpp under concurrent use, on the real engine (the bundled SmolLM2 GGUF).

Each loaded model runs its generations on one worker thread, one after another; callers only
read their own buffers. What used to hang (issue 10: async streams beyond the default
executor's workers, a paused stream and a call in the same thread, two streams zipped) must
finish, cancellation must free the engine, and output at ``temperature=0`` must not depend on
what ran before. A hang fails (``finishes``) instead of blocking the run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from pydantic import ValidationError

from langchain_multillm import ChatLlamaCpp, InvalidInputError, LlamaCpp
from langchain_multillm.backends import llamacpp
from tests import peers
from tests.integration_tests.parity import merge

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]

T = TypeVar("T")

# The default executor's workers (ThreadPoolExecutor's default), and four times that many
# streams: before the fix, more than the workers hung for ever.
WORKERS = min(32, (os.cpu_count() or 1) + 4)
MANY = 4 * WORKERS
BUDGET_S = 240.0  # below the test timeout: a hang fails here with a message
Q = [SystemMessage("Answer in one short sentence."), HumanMessage("What colour is the sky?")]


def finishes(fn: Callable[[], T], seconds: float = BUDGET_S) -> T:
    """``fn()`` in a daemon thread; fails if it has not returned within ``seconds``."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # re-raised below, in the test's thread
            out.append(("err", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds:.0f}s (hang)"
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


def _threads() -> dict[str, Any]:
    n = os.environ.get(peers.N_THREADS_ENV)  # unset: the model's default, shared with the tier
    return {"n_threads": int(n)} if n else {}


class _Evals:
    """Records the size of each ``Llama.eval`` call on an engine (prompts are the calls with
    more than one token; each generated token is a call of one)."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.sizes: list[int] = []

    def __enter__(self) -> _Evals:
        original = self.llama.eval

        def counted(tokens: Any) -> None:
            self.sizes.append(len(tokens))
            original(tokens)

        self.llama.eval = counted
        return self

    def __exit__(self, *exc: object) -> None:
        del self.llama.eval


@pytest.fixture(scope="module")
def llm(llama_cpp_available: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=8, **_threads())


def _idle(engine: Any, seconds: float = 60.0) -> bool:
    """Whether the engine's queue drains and its worker ends within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if engine._worker is None and not engine._jobs:
            return True
        time.sleep(0.02)
    return False


def _finished(msg: AIMessageChunk) -> None:
    assert msg.response_metadata.get("finish_reason") in ("stop", "length")
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0


# ---------------------------------------------------------------- async streams


def test_many_concurrent_astreams_all_finish(llm: ChatLlamaCpp) -> None:
    async def one(i: int) -> AIMessageChunk:
        return merge([c async for c in llm.astream(f"Say the number {i}.")])

    async def main() -> tuple[list[AIMessageChunk], float]:
        tasks = [asyncio.create_task(one(i)) for i in range(MANY)]
        await asyncio.sleep(0)
        # While every stream waits, the default executor still has free workers.
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 30)
        executor_s = time.perf_counter() - started
        return await asyncio.gather(*tasks), executor_s

    started = time.perf_counter()
    results, executor_s = finishes(lambda: asyncio.run(main()))
    elapsed = time.perf_counter() - started
    assert len(results) == MANY
    for msg in results:
        _finished(msg)
    assert executor_s < 30
    print(f"{MANY} astreams: {elapsed:.1f}s, a to_thread meanwhile: {executor_s * 1000:.0f}ms")
    assert _idle(llm.engine)


def test_streams_take_no_executor_worker(llm: ChatLlamaCpp) -> None:
    """With a one-worker default executor, waiting streams would take it from the one that
    generates; they must not use it at all while they wait."""

    async def main() -> list[AIMessageChunk]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        llm.get_limits()  # loaded here, so no call loads it through the executor

        async def one(i: int) -> AIMessageChunk:
            return merge([c async for c in llm.astream(f"Name a fruit ({i}).")])

        return await asyncio.gather(*(one(i) for i in range(6)))

    for msg in finishes(lambda: asyncio.run(main())):
        _finished(msg)


def test_abatch_streaming_finishes(llama_cpp_available: str) -> None:
    streaming = ChatLlamaCpp(
        model_path=llama_cpp_available, temperature=0, max_tokens=8, streaming=True, **_threads()
    )
    prompts = [f"Say the number {i}." for i in range(MANY)]
    results = finishes(lambda: asyncio.run(streaming.abatch(prompts)))  # type: ignore[arg-type]
    assert len(results) == MANY
    for msg in results:
        assert msg.response_metadata["finish_reason"] in ("stop", "length")
    # Without streaming, ainvoke reads the same buffers (no executor thread waits either).
    plain = streaming.model_copy(update={"streaming": False})
    results = finishes(lambda: asyncio.run(plain.abatch(prompts)))  # type: ignore[arg-type]
    assert len(results) == MANY and all(m.content for m in results)


def test_cancelled_astreams_free_the_engine(llm: ChatLlamaCpp) -> None:
    async def one(i: int, first: asyncio.Event) -> None:
        async for _ in llm.astream(f"Tell a long story number {i}.", max_tokens=200):
            first.set()

    async def main() -> None:
        firsts = [asyncio.Event() for _ in range(MANY)]
        tasks = [asyncio.create_task(one(i, e)) for i, e in enumerate(firsts)]
        await asyncio.wait_for(firsts[0].wait(), BUDGET_S)  # the first one is generating
        for t in tasks:
            t.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
        assert len(cancelled) >= MANY - 1

    llm.get_limits()
    with _Evals(llm.engine.llama) as evals:
        finishes(lambda: asyncio.run(main()))
        assert _idle(llm.engine, 60)
    # The queued generations never started (one prompt evaluated, two at most where the
    # worker took the next job as the cancellations came), the running one stopped early.
    prompts = [n for n in evals.sizes if n > 1]
    assert 1 <= len(prompts) <= 2, evals.sizes
    assert len(evals.sizes) < 2 * 200
    _finished(finishes(lambda: merge(list(llm.stream(Q)))))


def test_a_closed_stream_stops_generating(llm: ChatLlamaCpp) -> None:
    """Closing a stream stops its generation between items (an endless one here), and the
    engine moves on to the next job."""
    engine = llm.engine
    produced = itertools.count()

    def endless() -> Iterator[int]:
        while True:
            time.sleep(0.001)
            yield next(produced)

    def run() -> list[int]:
        stream = llamacpp._consume(engine, endless, fresh=True)
        got = [next(stream) for _ in range(3)]
        stream.close()
        return [*got, len(list(llamacpp._consume(engine, lambda: iter([7]), fresh=True)))]

    assert finishes(run, 60) == [0, 1, 2, 1]

    async def arun() -> list[int]:
        got = []
        stream = llamacpp._aconsume(engine, endless, fresh=True)
        async for item in stream:
            got.append(item)
            if len(got) == 3:
                break
        await stream.aclose()
        return got

    assert len(finishes(lambda: asyncio.run(arun()), 60)) == 3
    assert _idle(engine, 30)


# ---------------------------------------------------------------- one thread, several streams


def test_a_paused_stream_and_a_call_in_one_thread(llm: ChatLlamaCpp) -> None:
    def run() -> tuple[str, str]:
        stream = llm.stream(Q)
        first = next(stream)
        answer = llm.invoke("Say hi.")
        rest = merge([first, *stream])
        return str(answer.content), str(rest.content)

    answer, rest = finishes(run)
    assert answer and rest


def test_zipped_streams_in_one_thread(llm: ChatLlamaCpp) -> None:
    def run() -> list[tuple[AIMessageChunk, AIMessageChunk]]:
        return list(zip(llm.stream(Q), llm.stream("Name a colour."), strict=False))

    pairs = finishes(run)
    assert pairs
    a = merge([p[0] for p in pairs])
    assert a.content


def test_sync_streams_from_several_threads(llm: ChatLlamaCpp) -> None:
    def one(_: int) -> str:
        return str(merge(list(llm.stream(Q))).content)

    def run() -> list[str]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, range(8)))

    answers = finishes(run)
    assert len(answers) == 8 and len(set(answers)) == 1  # temperature 0, clean context each


def test_completion_streams_concurrently(llama_cpp_available: str) -> None:
    completion = LlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=8, **_threads())

    async def one(i: int) -> str:
        return "".join([c async for c in completion.astream(f"Number {i} is")])

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(2 * WORKERS)))

    assert all(finishes(lambda: asyncio.run(main())))
    stream = completion.stream("The sea is")
    first = next(stream)
    assert finishes(lambda: completion.invoke("The sky is"))
    assert first + "".join(stream)


# ---------------------------------------------------------------- temperature=0 repeatable


def test_temperature_zero_does_not_depend_on_earlier_calls(
    llm: ChatLlamaCpp, llama_cpp_available: str
) -> None:
    """The engine is shared: other prompts, another instance's sampling, a completion model and
    prompts sharing a prefix run in between, and the same prompt gives the same tokens."""
    other = ChatLlamaCpp(
        model_path=llama_cpp_available, temperature=0.9, max_tokens=8, **_threads()
    )
    twin = ChatLlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=8, **_threads())
    completion = LlamaCpp(model_path=llama_cpp_available, temperature=0, max_tokens=8, **_threads())
    assert other.engine is llm.engine is twin.engine is completion.engine

    first = llm.invoke(Q).content
    text_first = completion.invoke("The colour of the sky is")
    answers = [first]
    between: list[Callable[[], object]] = [
        lambda: other.invoke(Q),
        lambda: llm.invoke([Q[0], HumanMessage("What colour is the grass?")]),
        lambda: completion.invoke("Once upon a time"),
        lambda: llm.invoke([*Q[:1], HumanMessage("What colour is the sky at night?")]),
        lambda: other.invoke("Tell me a story.", max_tokens=16),
    ]
    for step in between:
        step()
        answers.append(llm.invoke(Q).content)
        answers.append(twin.invoke(Q).content)
        answers.append(merge(list(twin.stream(Q))).content)
    assert set(answers) == {first}
    assert completion.invoke("The colour of the sky is") == text_first

    async def interleaved() -> list[str]:
        async def ask(model: ChatLlamaCpp, q: Any) -> str:
            return str(merge([c async for c in model.astream(q)]).content)

        jobs = [ask(llm, Q), ask(other, Q), ask(twin, Q), ask(llm, "Say hi."), ask(twin, Q)]
        return await asyncio.gather(*jobs)

    got = finishes(lambda: asyncio.run(interleaved()))
    assert [got[0], got[2], got[4]] == [first] * 3


def test_cache_prompt_reuses_the_previous_prefix(llama_cpp_available: str) -> None:
    """``cache_prompt=True`` leaves llama-cpp-python's prefix reuse on: the engine keeps the
    previous prompt's tokens; the default starts from an empty context."""
    cached = ChatLlamaCpp(
        model_path=llama_cpp_available, temperature=0, max_tokens=4, cache_prompt=True, **_threads()
    )
    fresh = cached.model_copy(update={"cache_prompt": False})
    cached.invoke(Q)
    with _Evals(cached.engine.llama) as evals:
        out = cached.invoke(Q)
    assert out.usage_metadata is not None
    n = out.usage_metadata["input_tokens"]
    assert evals.sizes[0] < n  # the prompt was in the cache: only its tail re-evaluated
    with _Evals(cached.engine.llama) as evals:
        fresh.invoke(Q)
    assert evals.sizes[0] == n  # the whole prompt, from an empty context


# ---------------------------------------------------------------- model_path checked


def test_a_file_that_is_not_gguf_is_refused_at_construction(tmp_path: Path) -> None:
    """Refused by its magic bytes, without loading it (pydantic wraps the InvalidInputError in
    its ValidationError, a ValueError, as for every setting refused at construction)."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    before = llamacpp._MODELS.engines()
    for cls, path in ((ChatLlamaCpp, readme), (LlamaCpp, readme), (ChatLlamaCpp, empty)):
        with pytest.raises(ValidationError, match=r"model_path: .* is not a GGUF file") as info:
            cls(model_path=str(path))
        cause = info.value.errors()[0]["ctx"]["error"]
        assert isinstance(cause, InvalidInputError) and cause.field == "model_path"
    assert before == llamacpp._MODELS.engines()  # nothing loaded


# ---------------------------------------------------------------- holding the model (leases)


class _Loads:
    """Counts the loads of the backend's start (``llamacpp.load_model``), each made ``slow``
    seconds longer, and the event-loop ticks seen while each one ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, slow: float = 0.0) -> None:
        self.count = 0
        self.threads: list[str] = []
        self.ticks = 0
        self.ticks_during: list[int] = []
        original = llamacpp.load_model

        def load(kwargs: dict[str, Any]) -> Any:
            self.count += 1
            self.threads.append(threading.current_thread().name)
            before = self.ticks
            loaded = original(kwargs)
            time.sleep(slow)
            self.ticks_during.append(self.ticks - before)
            return loaded

        monkeypatch.setattr(llamacpp, "load_model", load)


def _freed(engine: Any) -> bool:
    """The model is closed and llama.cpp's model freed (``Llama.close()``)."""
    return bool(engine.closed) and engine.llama._model.model is None


def test_two_instances_share_one_load_and_the_last_release_closes_it(
    llama_cpp_available: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _Loads(monkeypatch)
    settings = {"model_path": llama_cpp_available, "n_ctx": 384, "n_threads": 1, "max_tokens": 2}
    a, b = ChatLlamaCpp(**settings), LlamaCpp(**settings)  # chat and completion: one model
    assert a.load().engine is b.engine and loads.count == 1
    eng = a.engine
    assert llamacpp._MODELS.holders(eng) == 2
    a.release()
    a.release()  # idempotent
    assert not eng.closed and llamacpp._MODELS.holders(eng) == 1
    # the other holder still uses it (an answer of any words, an empty one included)
    assert isinstance(b.invoke("The sky is"), str)
    b.release()
    assert _freed(eng) and llamacpp._MODELS.get(a._engine_key()) is None
    assert a.invoke(Q).content is not None  # a fresh call after release loads again
    assert loads.count == 2 and a.engine is not eng and not a.engine.closed
    again = a.engine
    a.release()
    assert _freed(again)


def test_a_closed_model_is_refused_until_release(
    llama_cpp_available: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model closed under its holder (``unload_models()`` closes every one) is refused as
    unavailable, by name, until the instance releases it; then the next call loads again."""
    from langchain_multillm import BackendUnavailableError

    loads = _Loads(monkeypatch)
    llm = ChatLlamaCpp(
        model_path=llama_cpp_available, n_ctx=448, n_threads=1, max_tokens=2, max_retries=0
    )
    eng = llm.load().engine
    eng.shutdown()  # what unload_models() does to each model (not called: it closes them all)
    assert _freed(eng)
    with pytest.raises(BackendUnavailableError, match="release"):
        llm.invoke(Q)
    assert not llm.health().ready
    llm.release()
    assert llm.invoke(Q).content is not None and loads.count == 2
    llm.release()


def test_the_first_async_call_does_not_block_the_event_loop(
    llama_cpp_available: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first ``ainvoke`` of a model loads it on a thread of its own (the registry's), the
    event loop keeps ticking meanwhile; concurrent first calls of one instance make one load
    and keep one hold."""
    loads = _Loads(monkeypatch, slow=0.5)
    llm = ChatLlamaCpp(model_path=llama_cpp_available, n_ctx=576, n_threads=1, max_tokens=2)

    async def main() -> list[Any]:
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                loads.ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await asyncio.gather(*(llm.ainvoke(Q) for _ in range(4)))
        finally:
            done.set()
            await ticker

    outs = finishes(lambda: asyncio.run(main()))
    assert len(outs) == 4 and loads.count == 1
    assert loads.threads == ["llamacpp-load-start"]  # not the loop's thread, not the executor's
    assert loads.ticks_during[0] >= 10, loads.ticks_during  # about 50 in the 0.5 s it took
    assert llamacpp._MODELS.holders(llm.engine) == 1
    eng = llm.engine
    llm.release()
    assert _freed(eng)
