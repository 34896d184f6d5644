"""One registry of in-process engines, shared by the backends that run a model in this process
(in-process vLLM, llama.cpp).

An engine is slow to start (it loads a model: seconds to minutes) and big, so there is one per
key (the model and the settings that shape the engine) in a process, shared by every model
instance that asks for that key. The registry is what makes that hold under concurrency:

* **one start per key**: the first caller of a key starts the engine, outside the registry's
  lock (other keys start and are served meanwhile); every other caller of that key waits for
  that one start (a thread blocks, a coroutine awaits without taking a thread), then looks
  again;
* **a failed start is not cached**: its exception goes to the caller that started it, and the
  next caller starts afresh (the waiters that woke up look again: one of them starts);
* **leases**: :meth:`EngineRegistry.acquire` returns a :class:`Lease`, one hold on the engine;
  :meth:`Lease.release` is idempotent and thread-safe, and the last release takes the engine
  out of the registry and shuts it down;
* **a dead engine is replaced**: a caller that finds its key's engine dead takes it out, shuts
  it down, and starts a fresh one (holders of the dead one keep it until they release it).

The registry knows nothing of vLLM or llama.cpp: an engine is any object with a ``dead``
property and an idempotent ``shutdown()`` (:class:`Engine`), and a start is a function that
builds one and returns it started (or raises, leaving nothing running). So the concurrency is
tested with plain Python objects (``tests/unit_tests/test_engines.py``), in the main test tier.

A model instance holds its engine through :class:`EngineHolder` (a mixin of the model class):
one lease per instance however many threads and coroutines ask at once, ``engine`` (sync) and
``_aengine()`` (async: waiting takes no thread, a start runs on a thread of its own), ``load()``
/ ``aload()``, and ``release()``. The backend writes the key, the start and the registry.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, PrivateAttr
from typing_extensions import Self

__all__ = ["Engine", "EngineHolder", "EngineRegistry", "Lease"]


class Engine(Protocol):
    """What the registry needs of an engine."""

    @property
    def dead(self) -> bool:
        """True once the engine cannot serve any more (shut down, or failed underneath)."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and free what it holds; idempotent, never raises."""
        ...


E = TypeVar("E", bound=Engine)


@dataclass(eq=False)
class _Slot(Generic[E]):
    """One started engine, its key, and how many leases hold it."""

    key: Hashable
    engine: E
    refs: int = 0


class Lease(Generic[E]):
    """One hold on an engine. :meth:`release` gives it back (once, whoever calls it how often:
    copies of a model instance share their lease); the last hold released shuts the engine
    down."""

    __slots__ = ("_lock", "_registry", "_slot", "released")

    def __init__(self, registry: EngineRegistry[E], slot: _Slot[E]) -> None:
        self._registry = registry
        self._slot = slot
        self._lock = threading.Lock()
        self.released = False

    @property
    def engine(self) -> E:
        return self._slot.engine

    def release(self) -> None:
        with self._lock:
            if self.released:
                return
            self.released = True
        self._registry._release(self._slot)


def _gate() -> concurrent.futures.Future[None]:
    """The gate of one start: done when that start ends, either way. Marked running, so a
    waiter that is cancelled cannot cancel it for the others."""
    gate: concurrent.futures.Future[None] = concurrent.futures.Future()
    gate.set_running_or_notify_cancel()
    return gate


@dataclass
class EngineRegistry(Generic[E]):
    """Engines by key, each started once and shared by leases (see the module's doc)."""

    name: str
    """Names the threads that start engines for coroutines (``{name}-start``)."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _live: dict[Hashable, _Slot[E]] = field(default_factory=dict, repr=False)
    _starting: dict[Hashable, concurrent.futures.Future[None]] = field(
        default_factory=dict, repr=False
    )
    _held: dict[int, _Slot[E]] = field(default_factory=dict, repr=False)
    _waiting: dict[Hashable, int] = field(default_factory=dict, repr=False)

    # ---- taking a hold ----
    def acquire(self, key: Hashable, start: Callable[[], E]) -> Lease[E]:
        """A hold on ``key``'s engine; ``start()`` builds and starts it where none runs (in
        this thread; concurrent callers of ``key`` wait for that one start). Raises what
        ``start`` raised, for the caller whose start failed; nothing is cached then."""
        waited = False
        while True:
            lease, gate, mine, dead = self._claim(key, waited)
            if dead is not None:
                dead.shutdown()
            if lease is not None:
                return lease
            if not mine:
                try:
                    gate.result()  # the one start of this key ended (either way): look again
                except BaseException:  # interrupted while waiting
                    self._unwait(key)
                    raise
                waited = True
                continue
            return self._start(key, start, gate)

    async def aacquire(self, key: Hashable, start: Callable[[], E]) -> Lease[E]:
        """:meth:`acquire` for a coroutine: a start runs on a thread of its own, waiting
        takes no thread. A caller cancelled while its start runs does not keep a hold: the
        start goes on (others may be waiting for it) and the hold it gave is released (the
        engine stays for the callers waiting on that start, and is closed if there are none)."""
        waited = False
        while True:
            lease, gate, mine, dead = self._claim(key, waited)
            if dead is not None:
                await asyncio.to_thread(dead.shutdown)
            if lease is not None:
                return lease
            if not mine:
                try:
                    await asyncio.wrap_future(gate)  # cancelling a waiter leaves the gate be
                except BaseException:
                    self._unwait(key)
                    raise
                waited = True
                continue
            done = self._start_on_thread(key, start, gate)
            try:
                return await asyncio.wrap_future(done)
            except asyncio.CancelledError:
                done.add_done_callback(_release_unwanted)
                raise

    def _start_on_thread(
        self, key: Hashable, start: Callable[[], E], gate: concurrent.futures.Future[None]
    ) -> concurrent.futures.Future[Lease[E]]:
        done: concurrent.futures.Future[Lease[E]] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()  # the awaiting coroutine cannot cancel the start

        def run() -> None:
            try:
                done.set_result(self._start(key, start, gate))
            except BaseException as exc:
                done.set_exception(exc)

        threading.Thread(target=run, name=f"{self.name}-start", daemon=True).start()
        return done

    def _claim(
        self, key: Hashable, waited: bool
    ) -> tuple[Lease[E] | None, concurrent.futures.Future[None], bool, E | None]:
        """Under the lock: a hold on a live engine, or the gate of the key's start (``mine``:
        this caller starts it; else it is counted as waiting); and a dead engine found on the
        way, taken out (the caller shuts it down, outside the lock). ``waited``: the caller
        was counted as waiting for a start, and is not any more."""
        dead: E | None = None
        with self._lock:
            if waited:
                self._not_waiting(key)
            slot = self._live.get(key)
            if slot is not None and not slot.engine.dead:
                return self._hold(slot), _DONE, False, None
            if slot is not None:  # died underneath: out, then start a fresh one
                dead = self._live.pop(key).engine
            gate = self._starting.get(key)
            mine = gate is None
            if gate is None:
                gate = self._starting[key] = _gate()
            else:
                self._waiting[key] = self._waiting.get(key, 0) + 1
        return None, gate, mine, dead

    def _not_waiting(self, key: Hashable) -> None:  # under the lock
        left = self._waiting[key] - 1
        if left:
            self._waiting[key] = left
        else:
            del self._waiting[key]

    def _unwait(self, key: Hashable) -> None:
        """A waiter gave up (cancelled, interrupted): an engine it was the last one waiting
        for, that nobody holds, is closed."""
        orphan: E | None = None
        with self._lock:
            self._not_waiting(key)
            slot = self._live.get(key)
            if slot is not None and slot.refs == 0 and key not in self._waiting:
                del self._live[key]
                orphan = slot.engine
        if orphan is not None:
            orphan.shutdown()

    def _start(
        self, key: Hashable, start: Callable[[], E], gate: concurrent.futures.Future[None]
    ) -> Lease[E]:
        try:
            engine = start()
        except BaseException:
            with self._lock:
                del self._starting[key]
            gate.set_result(None)
            raise
        with self._lock:
            slot = _Slot(key, engine)
            self._live[key] = slot
            lease = self._hold(slot)
            del self._starting[key]
        gate.set_result(None)
        return lease

    def _hold(self, slot: _Slot[E]) -> Lease[E]:  # under the lock
        slot.refs += 1
        self._held[id(slot.engine)] = slot
        return Lease(self, slot)

    def _release(self, slot: _Slot[E]) -> None:
        with self._lock:
            slot.refs -= 1
            last = slot.refs == 0
            if last:
                self._held.pop(id(slot.engine), None)
                if self._live.get(slot.key) is slot:
                    if slot.key in self._waiting:
                        # Callers woken by its start have not taken their holds yet (the
                        # starter gave its up): the engine is theirs.
                        return
                    del self._live[slot.key]
        if last:
            slot.engine.shutdown()

    # ---- looking, never starting ----
    def get(self, key: Hashable) -> E | None:
        """``key``'s engine if one is registered (it may have died underneath); never
        starts one."""
        with self._lock:
            slot = self._live.get(key)
            return None if slot is None else slot.engine

    def holders(self, engine: E) -> int:
        """How many leases hold ``engine``."""
        with self._lock:
            slot = self._held.get(id(engine))
            return 0 if slot is None or slot.engine is not engine else slot.refs

    def engines(self) -> list[E]:
        """The engines registered now."""
        with self._lock:
            return [slot.engine for slot in self._live.values()]

    def starting(self) -> list[Hashable]:
        """The keys whose engine is being started now."""
        with self._lock:
            return list(self._starting)

    # ---- taking out ----
    def drop(self, engine: E) -> None:
        """Take ``engine`` out of the registry (the next caller of its key starts another);
        it is not shut down, its holders keep it until they release it."""
        with self._lock:
            for key, slot in list(self._live.items()):
                if slot.engine is engine:
                    del self._live[key]

    def shutdown_all(self) -> None:
        """Take every engine out and shut it down, whoever holds it (their memory is freed;
        a start under way registers its engine when it ends)."""
        with self._lock:
            slots = list(self._live.values())
            self._live.clear()
        for slot in slots:
            slot.engine.shutdown()


_DONE: concurrent.futures.Future[None] = concurrent.futures.Future()
_DONE.set_result(None)


def _release_unwanted(done: concurrent.futures.Future[Lease[E]]) -> None:
    """The hold a cancelled coroutine's start gave, released when that start ends."""
    if done.exception() is None:
        done.result().release()


class EngineHolder(BaseModel, Generic[E]):
    """A model instance's hold on its engine: one lease per instance, shared by its threads and
    coroutines (and by its copies), given back by :meth:`release`.

    The backend lists it among its bases (``class _Mine(ModelSurface, EngineHolder[MyEngine])``)
    and writes ``_engine_registry`` (class attribute: the process's registry of its engines),
    ``_engine_key()`` (the model and the settings that shape the engine) and ``_start_engine()``
    (builds and starts one engine; the registry calls it where none runs for the key).

    An engine that died stays this instance's engine until :meth:`release` (the backend's calls
    say so); the next use then starts or joins a fresh one.
    """

    _engine_registry: ClassVar[EngineRegistry[Any]]
    _lease: Lease[E] | None = PrivateAttr(default=None)
    _lease_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # ---- hooks (the backend writes them) ----
    @abc.abstractmethod
    def _engine_key(self) -> Hashable:
        """The key of this instance's engine in the registry."""

    @abc.abstractmethod
    def _start_engine(self) -> E:
        """Build and start this instance's engine (slow: it loads the model); raise, leaving
        nothing running, where it cannot start."""

    # ---- the hold ----
    @property
    def engine(self) -> E:
        """The shared engine (started on first use, which loads the model; this thread waits).

        An engine that died stays this instance's engine until :meth:`release`; the next use
        then starts (or joins) a fresh one.
        """
        lease = self._lease
        if lease is not None and not lease.released:
            return lease.engine
        return self._keep(self._engine_registry.acquire(self._engine_key(), self._start_engine))

    async def _aengine(self) -> E:
        """:attr:`engine` for a coroutine: waiting for a start takes no thread, a start runs on
        a thread of its own, and a cancelled caller keeps no hold."""
        lease = self._lease
        if lease is not None and not lease.released:
            return lease.engine
        new = await self._engine_registry.aacquire(self._engine_key(), self._start_engine)
        return self._keep(new)

    def _keep(self, new: Lease[E]) -> E:
        """Make ``new`` this instance's lease, unless a concurrent caller of the instance got
        one first: that one is kept and ``new`` given back (one hold per instance)."""
        with self._lease_lock:
            held = self._lease
            if held is None or held.released:
                self._lease = new
                return new.engine
        new.release()
        return held.engine

    def _held_engine(self) -> E | None:
        """The engine this instance holds (None: it holds none); never starts one."""
        lease = self._lease
        return lease.engine if lease is not None and not lease.released else None

    def _started_engine(self) -> E | None:
        """The engine if it runs already, held by this instance or by another one with the same
        key (it may have died underneath); never starts one."""
        held = self._held_engine()
        return held if held is not None else self._engine_registry.get(self._engine_key())

    def load(self) -> Self:
        """Start (or join) the engine now instead of on the first call; returns ``self``."""
        _ = self.engine
        return self

    async def aload(self) -> Self:
        """:meth:`load` for a coroutine (the event loop keeps running meanwhile)."""
        await self._aengine()
        return self

    def release(self) -> None:
        """Give this instance's hold on the engine back; the last holder shuts it down.

        Idempotent. The instance can still be used: its next call starts (or joins) an engine
        again.
        """
        with self._lease_lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
