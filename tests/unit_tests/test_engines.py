"""The engine registry (``langchain_multillm._engines``) driven by fake engines: plain Python
objects whose start is held open by the test, so every interleaving that matters (callers
meeting one start, a start failing under waiters, releases during a start, a cancelled
coroutine) is made to happen, with threads and with asyncio; and the hold a model instance
has on its engine (``EngineHolder``), on the same fakes. In-process vLLM and llama.cpp run
their engines on this registry, through that holder; their own tiers test it with real
engines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from langchain_multillm._engines import EngineHolder, EngineRegistry, Lease

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0  # seconds a test waits for something that must happen (far more than it takes)


class Fake:
    """An engine: dead once shut down, or when the test kills it underneath."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.shutdowns = 0
        self.killed = False

    @property
    def dead(self) -> bool:
        return self.killed or self.shutdowns > 0

    def shutdown(self) -> None:
        self.shutdowns += 1


class Starter:
    """Counts starts; each start waits until the test opens ``go`` (open by default) and
    raises where ``fail`` says so (by start number, from 1)."""

    def __init__(self, *, hold: bool = False, fail: Callable[[int], bool] = lambda n: False):
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.started = threading.Event()  # set when a start has begun
        self.fail = fail
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> Fake:
        with self.lock:
            self.count += 1
            n = self.count
        self.started.set()
        assert self.go.wait(WAIT), "the test never let the start finish"
        if self.fail(n):
            raise RuntimeError(f"start {n} failed")
        return Fake(n)


def wait_for(what: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


# ------------------------------------------------------------------ threads


def test_concurrent_callers_of_one_key_share_one_start() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(reg.acquire, "k", start) for _ in range(8)]
        assert start.started.wait(WAIT)
        wait_for(lambda: reg.starting() == ["k"])
        time.sleep(0.05)  # the others are waiting on the gate, not starting their own
        assert start.count == 1 and not any(f.done() for f in futures)
        start.go.set()
        leases = [f.result(WAIT) for f in futures]
    assert start.count == 1
    assert len({id(lease.engine) for lease in leases}) == 1
    eng = leases[0].engine
    assert reg.holders(eng) == 8 and reg.engines() == [eng] and reg.starting() == []


def test_other_keys_start_and_are_served_while_one_starts() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    slow = Starter(hold=True)
    held = reg.acquire("ready", Starter())
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reg.acquire, "slow", slow)
        assert slow.started.wait(WAIT)
        other = reg.acquire("other", Starter())  # not blocked by the start of "slow"
        again = reg.acquire("ready", Starter())
        assert again.engine is held.engine and reg.holders(held.engine) == 2
        assert reg.get("slow") is None  # never a half-started engine
        slow.go.set()
        assert pending.result(WAIT).engine is reg.get("slow")
    assert {e.n for e in reg.engines()} == {1} and len(reg.engines()) == 3
    assert other.engine is reg.get("other")


def test_a_failed_start_is_not_cached_the_next_caller_starts_again() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(fail=lambda n: n == 1)
    with pytest.raises(RuntimeError, match="start 1 failed"):
        reg.acquire("k", start)
    assert reg.engines() == [] and reg.starting() == []
    lease = reg.acquire("k", start)
    assert start.count == 2 and lease.engine.n == 2 and reg.holders(lease.engine) == 1


def test_waiters_of_a_failed_start_retry_and_only_one_of_them_starts() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True, fail=lambda n: n == 1)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(reg.acquire, "k", start)
        assert start.started.wait(WAIT)
        waiters = [pool.submit(reg.acquire, "k", start) for _ in range(5)]
        time.sleep(0.05)
        start.go.set()
        with pytest.raises(RuntimeError, match="start 1 failed"):
            first.result(WAIT)  # the error goes to the caller whose start failed
        leases = [w.result(WAIT) for w in waiters]
    assert start.count == 2  # one retry for all five waiters
    assert {lease.engine.n for lease in leases} == {2} and reg.holders(leases[0].engine) == 5


def test_an_interrupted_start_opens_the_gate() -> None:
    """A start ended by a BaseException (KeyboardInterrupt) leaves no gate shut behind it."""
    reg: EngineRegistry[Fake] = EngineRegistry("t")

    def interrupted() -> Fake:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reg.acquire("k", interrupted)
    assert reg.starting() == []
    assert reg.acquire("k", Starter()).engine.n == 1


def test_the_last_release_closes_the_engine_and_the_next_caller_starts_one() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    a, b = reg.acquire("k", start), reg.acquire("k", start)
    eng = a.engine
    a.release()
    assert eng.shutdowns == 0 and reg.get("k") is eng and reg.holders(eng) == 1
    b.release()
    assert eng.shutdowns == 1 and reg.get("k") is None and reg.holders(eng) == 0
    c = reg.acquire("k", start)
    assert c.engine is not eng and start.count == 2


def test_releasing_one_lease_many_times_from_many_threads_counts_once() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    shared, other = reg.acquire("k", start), reg.acquire("k", start)
    barrier = threading.Barrier(16)

    def release() -> None:
        barrier.wait(WAIT)
        shared.release()

    threads = [threading.Thread(target=release) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert shared.released and reg.holders(other.engine) == 1 and not other.engine.dead
    other.release()
    assert other.engine.shutdowns == 1


def test_concurrent_acquire_and_release_keep_the_count() -> None:
    """Many threads taking and giving back holds on one key: every engine is shut down once,
    when its last hold goes, and never while held."""
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    errors: list[str] = []

    def work() -> None:
        for _ in range(200):
            lease = reg.acquire("k", start)
            if lease.engine.shutdowns:
                errors.append(f"engine {lease.engine.n} handed out after its shutdown")
            lease.release()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    assert reg.engines() == []  # every hold given back: nothing left running


def test_a_dead_engine_is_replaced_and_its_holders_release_it_safely() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    old = reg.acquire("k", start)
    old.engine.killed = True  # died underneath
    new = reg.acquire("k", start)
    assert new.engine is not old.engine and old.engine.shutdowns == 1
    assert reg.get("k") is new.engine
    old.release()  # the dead one's last holder: it must not take the new one out
    assert reg.get("k") is new.engine and new.engine.shutdowns == 0


def test_a_release_during_a_start_of_the_same_key() -> None:
    """The last holder of a dead engine releases it while its replacement is starting: the old
    one is shut down, the start goes on and registers the new one."""
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    old = reg.acquire("k", start)
    old.engine.killed = True
    slow = Starter(hold=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reg.acquire, "k", slow)
        assert slow.started.wait(WAIT)
        old.release()
        assert reg.starting() == ["k"] and reg.get("k") is None
        slow.go.set()
        new = pending.result(WAIT)
    assert reg.get("k") is new.engine and reg.holders(new.engine) == 1
    assert new.engine.shutdowns == 0 and old.engine.shutdowns >= 1


def test_a_release_on_another_key_during_a_start() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    other = reg.acquire("other", Starter())
    slow = Starter(hold=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reg.acquire, "k", slow)
        assert slow.started.wait(WAIT)
        other.release()  # the registry's lock is not held by the start
        assert other.engine.shutdowns == 1 and reg.get("other") is None
        slow.go.set()
        assert pending.result(WAIT).engine is reg.get("k")


def test_drop_and_shutdown_all() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    a = reg.acquire("a", Starter())
    b = reg.acquire("b", Starter())
    reg.drop(a.engine)
    assert reg.engines() == [b.engine] and a.engine.shutdowns == 0  # dropped, not shut down
    assert reg.acquire("a", Starter()).engine is not a.engine
    reg.shutdown_all()
    assert reg.engines() == [] and b.engine.shutdowns == 1
    b.release()  # a hold on an engine already shut down: shutdown is idempotent
    assert reg.get("b") is None


# ------------------------------------------------------------------ asyncio


async def test_coroutines_share_one_start_and_the_loop_keeps_running() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    tasks = [asyncio.create_task(reg.aacquire("k", start)) for _ in range(8)]
    ticks = 0
    while not start.started.is_set():  # the start runs on a thread: this loop is free
        await asyncio.sleep(0.001)
    for _ in range(20):
        await asyncio.sleep(0.001)
        ticks += 1
    assert ticks == 20 and not any(t.done() for t in tasks)
    start.go.set()
    leases = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert start.count == 1 and len({id(lease.engine) for lease in leases}) == 1
    assert reg.holders(leases[0].engine) == 8


async def test_coroutines_and_threads_meet_at_one_start() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    task = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    threaded = asyncio.create_task(asyncio.to_thread(reg.acquire, "k", start))
    await asyncio.sleep(0.05)
    start.go.set()
    a, b = await asyncio.wait_for(asyncio.gather(task, threaded), WAIT)
    assert a.engine is b.engine and start.count == 1 and reg.holders(a.engine) == 2


async def test_a_failed_start_reaches_its_coroutine_and_a_waiter_retries() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True, fail=lambda n: n == 1)
    first = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    waiter = asyncio.create_task(reg.aacquire("k", start))
    await asyncio.sleep(0.02)
    start.go.set()
    with pytest.raises(RuntimeError, match="start 1 failed"):
        await asyncio.wait_for(first, WAIT)
    lease = await asyncio.wait_for(waiter, WAIT)
    assert start.count == 2 and lease.engine.n == 2 and reg.starting() == []


async def test_a_coroutine_cancelled_during_its_start_keeps_no_hold() -> None:
    """The start goes on (it cannot be stopped halfway); the hold it gives the cancelled
    coroutine is released, so with nobody else holding it the engine is closed."""
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    task = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    start.go.set()
    await asyncio.to_thread(wait_for, lambda: reg.starting() == [])
    await asyncio.to_thread(wait_for, lambda: reg.get("k") is None)
    assert start.count == 1
    lease = await reg.aacquire("k", start)  # a fresh start: the unwanted one was closed
    assert lease.engine.n == 2


async def test_a_cancelled_starter_leaves_the_engine_to_its_waiters() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    starter = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    waiter = asyncio.create_task(reg.aacquire("k", start))
    await asyncio.sleep(0.02)
    starter.cancel()
    start.go.set()
    lease = await asyncio.wait_for(waiter, WAIT)
    await asyncio.to_thread(wait_for, lambda: reg.holders(lease.engine) == 1)
    assert start.count == 1 and not lease.engine.dead and reg.get("k") is lease.engine


async def test_a_cancelled_waiter_does_not_cancel_the_start_for_the_others() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    starter = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    waiters = [asyncio.create_task(reg.aacquire("k", start)) for _ in range(3)]
    await asyncio.sleep(0.02)
    waiters[0].cancel()
    await asyncio.sleep(0.02)
    start.go.set()
    lease = await asyncio.wait_for(starter, WAIT)
    rest = await asyncio.wait_for(asyncio.gather(*waiters[1:]), WAIT)
    assert waiters[0].cancelled() and start.count == 1
    assert all(r.engine is lease.engine for r in rest) and reg.holders(lease.engine) == 3


async def test_a_dead_engine_is_replaced_from_a_coroutine() -> None:
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter()
    old: Lease[Fake] = await reg.aacquire("k", start)
    assert (await reg.aacquire("k", start)).engine is old.engine  # live: no thread, no start
    old.engine.killed = True
    new = await reg.aacquire("k", start)
    assert new.engine is not old.engine and old.engine.shutdowns == 1 and start.count == 2


async def test_an_engine_nobody_waits_for_any_more_is_closed() -> None:
    """The starter and its only waiter are both cancelled before the start ends: the engine
    it starts has no one to go to, and is closed."""
    reg: EngineRegistry[Fake] = EngineRegistry("t")
    start = Starter(hold=True)
    starter = asyncio.create_task(reg.aacquire("k", start))
    while not start.started.is_set():
        await asyncio.sleep(0.001)
    waiter = asyncio.create_task(reg.aacquire("k", start))
    await asyncio.sleep(0.02)
    starter.cancel()
    waiter.cancel()
    await asyncio.gather(starter, waiter, return_exceptions=True)
    start.go.set()
    await asyncio.to_thread(wait_for, lambda: reg.starting() == [] and reg.get("k") is None)
    assert reg.engines() == [] and start.count == 1


# ------------------------------------------------------------------ the holder (a model's lease)


HOLDER_START = Starter()  # replaced per test: the start every FakeModel of the test runs


class FakeModel(EngineHolder[Fake]):
    """A model class as a backend writes it: the registry, the key, the start."""

    key: str = "k"
    _engine_registry = EngineRegistry("fake-models")

    def _engine_key(self) -> str:
        return self.key

    def _start_engine(self) -> Fake:
        return HOLDER_START()


@pytest.fixture
def holder_start() -> Iterator[Starter]:
    """A held start for the test's FakeModels, and a registry left empty after it."""
    global HOLDER_START
    HOLDER_START = Starter(hold=True)
    yield HOLDER_START
    HOLDER_START.go.set()
    FakeModel._engine_registry.shutdown_all()


def test_a_holder_keeps_one_lease_however_many_threads_ask(holder_start: Starter) -> None:
    model = FakeModel()
    assert model._held_engine() is None and model._started_engine() is None
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(lambda: model.engine) for _ in range(32)]
        assert holder_start.started.wait(WAIT)
        time.sleep(0.05)
        holder_start.go.set()
        engines = {id(f.result(WAIT)) for f in futures}
    reg = FakeModel._engine_registry
    assert len(engines) == 1 and holder_start.count == 1
    assert reg.holders(model.engine) == 1  # the extra leases were given back
    assert model.load() is model and reg.holders(model.engine) == 1


async def test_a_holder_keeps_one_lease_however_many_coroutines_and_threads_ask(
    holder_start: Starter,
) -> None:
    model = FakeModel()
    tasks = [asyncio.create_task(model._aengine()) for _ in range(16)]
    threads = [asyncio.create_task(asyncio.to_thread(lambda: model.engine)) for _ in range(4)]
    while not holder_start.started.is_set():  # the start runs on a thread: this loop is free
        await asyncio.sleep(0.001)
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.001)
        ticks += 1
    assert ticks == 20 and not any(t.done() for t in tasks)
    holder_start.go.set()
    got = await asyncio.wait_for(asyncio.gather(*tasks, *threads), WAIT)
    assert len({id(e) for e in got}) == 1 and holder_start.count == 1
    assert FakeModel._engine_registry.holders(got[0]) == 1
    assert await model.aload() is model and FakeModel._engine_registry.holders(got[0]) == 1


def test_release_is_idempotent_and_the_next_use_acquires_again(holder_start: Starter) -> None:
    holder_start.go.set()
    model = FakeModel()
    first = model.engine
    model.release()
    model.release()  # idempotent: one hold, given back once
    assert first.shutdowns == 1 and model._held_engine() is None
    assert FakeModel._engine_registry.get("k") is None
    second = model.engine  # usable again: a fresh start
    assert second is not first and holder_start.count == 2
    assert FakeModel._engine_registry.holders(second) == 1


def test_two_holders_of_one_key_share_it_and_the_last_release_shuts_it_down(
    holder_start: Starter,
) -> None:
    holder_start.go.set()
    a, b, other = FakeModel(), FakeModel(), FakeModel(key="other")
    assert a.engine is b.engine and holder_start.count == 1
    assert b._started_engine() is a.engine  # seen through the registry, never started
    assert other._started_engine() is None and holder_start.count == 1
    a.release()
    assert not b.engine.dead and FakeModel._engine_registry.holders(b.engine) == 1
    eng = b.engine
    b.release()
    assert eng.shutdowns == 1 and FakeModel._engine_registry.engines() == []


def test_a_dead_engine_stays_the_holders_until_release(holder_start: Starter) -> None:
    holder_start.go.set()
    model = FakeModel()
    eng = model.engine
    eng.killed = True
    assert model.engine is eng  # the instance's calls say it is dead: no silent restart
    model.release()
    assert model.engine is not eng and holder_start.count == 2


def test_copies_share_their_lease(holder_start: Starter) -> None:
    holder_start.go.set()
    model = FakeModel()
    eng = model.engine
    copy = model.model_copy()
    assert copy.engine is eng and FakeModel._engine_registry.holders(eng) == 1
    copy.release()  # the one hold they share
    assert eng.shutdowns == 1
    assert model.engine is not eng  # the original acquires again


async def test_a_holder_cancelled_during_its_start_keeps_no_hold(holder_start: Starter) -> None:
    model = FakeModel()
    task = asyncio.create_task(model._aengine())
    while not holder_start.started.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holder_start.go.set()
    reg = FakeModel._engine_registry
    await asyncio.to_thread(wait_for, lambda: reg.starting() == [] and reg.get("k") is None)
    assert model._held_engine() is None and reg.engines() == []
    assert holder_start.count == 1  # the start ran, and its engine was closed (nobody held it)
    eng = await model._aengine()
    assert holder_start.count == 2 and reg.holders(eng) == 1


async def test_a_cancelled_coroutine_of_a_holder_leaves_the_engine_to_the_others(
    holder_start: Starter,
) -> None:
    model = FakeModel()
    first = asyncio.create_task(model._aengine())
    while not holder_start.started.is_set():
        await asyncio.sleep(0.001)
    second = asyncio.create_task(model._aengine())
    await asyncio.sleep(0.02)
    first.cancel()
    holder_start.go.set()
    eng = await asyncio.wait_for(second, WAIT)
    reg = FakeModel._engine_registry
    await asyncio.to_thread(wait_for, lambda: reg.holders(eng) == 1)
    assert model._held_engine() is eng and not eng.dead and holder_start.count == 1
