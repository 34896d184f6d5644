"""What ``ChatVLLM`` and ``VLLM`` share: engine and sampling settings, the lease on the
engine, limits, counting, health, and the mapping of a call onto ``vllm.SamplingParams``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Awaitable
from typing import Any, ClassVar

from pydantic import Field, model_validator

from langchain_multillm._base import (
    MinP,
    ModelSurface,
    Penalties,
    Prompt,
    RepetitionPenalty,
    Seed,
    TopK,
    is_local,
)
from langchain_multillm._engines import EngineHolder
from langchain_multillm._openai import to_openai_messages
from langchain_multillm._tool_forcing import forced_tool
from langchain_multillm.backends.vllm._engine import (
    BACKEND,
    REGISTRY,
    EngineHandle,
    _require_vllm,
    _start,
    sampling_fields,
)
from langchain_multillm.backends.vllm._tools import _response_format
from langchain_multillm.errors import (
    BackendError,
    IncompleteResponseError,
    InvalidInputError,
    from_vllm_error,
)
from langchain_multillm.fit import Limits, chat_bound
from langchain_multillm.health import HealthReport, describe, down

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
# Handled by the call itself, never sent as they are (besides the package's own keys,
# ``_base.LOCAL_CALL_PARAMS`` and ``ls_*``): structured_outputs (a dict of vLLM's
# StructuredOutputsParams: json, regex, choice, grammar, ...) becomes the request's structured
# decoding.
_LOCAL_KEYS = frozenset({"model", "structured_outputs"})


class _VLLMEngineModel(
    ModelSurface, TopK, MinP, Penalties, RepetitionPenalty, Seed, EngineHolder[EngineHandle]
):
    """Engine settings, sampling settings, the hold on the engine (:class:`EngineHolder`:
    ``engine``, ``load()``, ``release()``), counting and health: what both classes share."""

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

    # The sampling fields come from the shared mixins (``_base``: sent by the one
    # ``_default_params``, taken per call); vLLM's top_k also takes -1 and 0 for "all".
    top_k: int | None = Field(default=None, ge=-1)
    """Sample from the k most likely tokens (-1, 0 or None: all)."""

    _backend: ClassVar[str] = BACKEND
    _local_call_params: ClassVar[frozenset[str]] = _LOCAL_KEYS
    _call_param_hints: ClassVar[dict[str, str]] = dict.fromkeys(
        _INTERNAL_FIELDS - _LOCAL_KEYS,
        "is set by this package (one answer per input, streamed or not)",
    )
    _engine_registry = REGISTRY

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

    def _start_engine(self) -> EngineHandle:
        return _start(self._engine_key(), self._engine_args())

    # ---- one request ----
    def _plan(self, req: Any, eng: EngineHandle) -> Any:
        """The engine and ``SamplingParams`` of a request on ``eng`` (what else a class needs
        with them)."""
        raise NotImplementedError

    async def _aplan(self, req: Any) -> Any:
        # A start (minutes) runs on a thread of its own; waiting for it takes no thread.
        return self._plan(req, await self._aengine())

    # ---- limits, counting ----
    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.engine.max_model_len)

    def _static_limits(self) -> Limits | None:
        # vLLM serves exactly the max_model_len it is given (or refuses to start).
        return Limits(context_window=self.max_model_len) if self.max_model_len else None

    async def _afetch_limits(self) -> Limits:
        return Limits(context_window=(await self._aengine()).max_model_len)

    def _own_template(self) -> str | None:
        """The chat template this instance renders instead of the model's (None: the model's;
        ``ChatVLLM.chat_template``)."""
        return None

    def _count_bound(self, prompt: Prompt) -> int | None:
        eng = self._started_engine()
        if eng is None or eng.dead:
            return None
        if prompt.text is not None:
            return chat_bound(prompt, None)
        if eng.bound is None or self._own_template() is not None:
            return None  # the measured template is not the one this instance renders: count
        return chat_bound(prompt, eng.bound)

    def _render(self, eng: EngineHandle, prompt: Prompt, *, limit: bool) -> Awaitable[Any]:
        if prompt.text is not None:
            return eng.render_text(prompt.text, limit=limit)
        return eng.render_chat(
            to_openai_messages(prompt.messages or []),
            prompt.tools,
            limit=limit,
            template=self._own_template(),
        )

    def _count_exact(self, prompt: Prompt) -> int | None:
        eng = self.engine
        eng.check_alive()
        return len(eng.run(self._render(eng, prompt, limit=False))["prompt_token_ids"])

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        eng = await self._aengine()
        eng.check_alive()
        rendered = await eng.arun(self._render(eng, prompt, limit=False))
        return len(rendered["prompt_token_ids"])

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
        """``vllm.SamplingParams`` for a call (the engine's generation defaults, overridden by
        ``params``); unknown keys are refused, naming them."""
        from vllm import SamplingParams

        # ``params``: the instance's sampling settings (``_default_params``: the mixins'
        # fields, None left out) overridden by the call's.
        out = self._sampling_keys(params, chat=chat, fields=eng.sampling_fields)
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
            if is_local(key) or key in _LOCAL_KEYS or (chat and key in _CHAT_ONLY):
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
            forced_tool(params.get("tool_choice"), tools)
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
