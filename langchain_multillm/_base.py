"""The surface every model of this package shares, and the call flow around the backends.

A backend fills a few hooks; everything else (input checks, the fit check and its policy,
retries, stream handling, health) is written once here. The whole contract, with what each hook
gets and returns: docs/backends/writing.md. Required hooks are abstract; the flow methods are
``typing.final`` (mypy fails on a backend that overrides one).

* health (required): ``_health`` / ``_ahealth``; ``health(deep=True)``: ``_deep_health`` /
  ``_adeep_health`` (a check that may cost; by default the free one);
* limits: ``_fetch_limits`` / ``_afetch_limits`` (discovered once, then cached);
* limits known without I/O (a table, a setting): ``_static_limits`` (fills ``profile`` and the
  limit fields at construction);
* counting: ``_count_exact`` / ``_acount_exact`` (exact, may ask the server),
  ``_count_bound`` (a cheap proven upper bound, no I/O), ``_max_token_bytes`` (the longest
  token of the vocabulary, in bytes, for the lower bound; None where the vocabulary is unknown)
  and ``_count_lower`` (the lower bound itself);
* the keys a call may carry: ``_call_params`` / ``_call_param_hints`` (class attributes),
  ``_allowed_call_params`` (one check for every backend, in ``_start``); the keys never sent:
  :data:`LOCAL_CALL_PARAMS` and ``_local_call_params`` (``_wire_params``); a request this
  backend can never serve: ``_check_offline`` (``InvalidInputError``, before any network call);
* sampling fields: the mixins (:class:`Seed`, :class:`Penalties`, :class:`RepetitionPenalty`,
  :class:`TopK`, :class:`MinP`, :class:`TypicalP`, :class:`ExtraBody`) and ``_param_fields``,
  sent by the one ``_default_params``;
* chat (required): ``_chat`` / ``_achat`` / ``_chat_stream`` / ``_achat_stream`` taking a
  :class:`ChatRequest`; completion (required): ``_complete`` / ``_acomplete`` /
  ``_complete_stream`` / ``_acomplete_stream`` taking a :class:`CompletionRequest`;
* an engine that batches what is in flight: ``_batches_in_engine`` (class attribute);
* the layers above this one add theirs: ``_auth_flow`` / ``_headers``, the probes as data
  ``_health_probe`` / ``_limits_probe`` and ``_measure_template`` (``_http.py``),
  ``_chat_url`` (required), ``_chat_body``, ``_before_send`` / ``_abefore_send``,
  ``_usage_fallback`` / ``_ausage_fallback`` (``_openai.py``).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import json
import re
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, final

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.outputs import (
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from langchain_multillm._request import ChatRequest, CompletionRequest, Prompt, PromptInput
from langchain_multillm._retry import acall, afirst_of, call, first_of
from langchain_multillm.errors import (
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    MultiLLMError,
    MultiLLMWarning,
)
from langchain_multillm.fit import (
    UNKNOWN_MAX_TOKEN_BYTES,
    ContextOverflowPolicy,
    FitReport,
    Limits,
    check_policy,
    decide,
    enforce,
    lower_bound,
    undecided,
)
from langchain_multillm.health import HealthReport, describe, down

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "ModelSurface",
    "MultiLLMChatModel",
    "MultiLLMCompletionModel",
    "Prompt",
    "PromptInput",
]

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


# ------------------------------------------------------------------ input checks


def check_sampling(params: dict[str, Any]) -> None:
    """Reject sampling settings out of range, naming the field (before any network call)."""
    mt = params.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt <= 0):
        raise InvalidInputError("max_tokens", f"must be a positive integer or None; got {mt!r}")
    t = params.get("temperature")
    if t is not None and not (isinstance(t, (int, float)) and 0 <= t <= 2):
        raise InvalidInputError("temperature", f"must be between 0 and 2; got {t!r}")
    p = params.get("top_p")
    if p is not None and not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise InvalidInputError("top_p", f"must be in (0, 1]; got {p!r}")
    m = params.get("model")
    if m is not None and (not isinstance(m, str) or not m.strip()):
        raise InvalidInputError("model", f"must be a non-empty string; got {m!r}")
    stop = params.get("stop")
    if stop is not None and not (
        isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)
    ):
        raise InvalidInputError("stop", f"must be a list of non-empty strings; got {stop!r}")


def check_messages(messages: Sequence[BaseMessage]) -> None:
    """Reject an empty conversation or a role no chat API knows."""
    if not messages:
        raise InvalidInputError("messages", "at least one message is required; got none")
    for i, m in enumerate(messages):
        if isinstance(m, ChatMessage) and m.role not in CHAT_ROLES:
            raise InvalidInputError(
                f"messages[{i}].role", f"must be one of {', '.join(CHAT_ROLES)}; got {m.role!r}"
            )
        if not isinstance(
            m, (HumanMessage, AIMessage, SystemMessage, ToolMessage, ChatMessage, FunctionMessage)
        ):
            raise InvalidInputError(
                f"messages[{i}]", f"unsupported message type {type(m).__name__}"
            )


def check_model_name(value: str) -> str:
    """Validator for ``model`` fields."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("model", "must be a non-empty string")
    return value


# Keys of a call that are the package's or LangChain's own, never sent to an API: the fit
# policy, LangChain's per-call streaming switch (``stream``: it turns streaming off for a call)
# and its tracing metadata (``ls_*``, e.g. ``ls_structured_output_format``). The one list of
# them: :func:`wire_params` leaves them out of every body.
LOCAL_CALL_PARAMS = frozenset({"context_overflow", "stream", "ls_structured_output_format"})
# Keys every call may carry, whatever the backend: the sampling fields every model has, and the
# local keys above.
COMMON_CALL_PARAMS = (
    frozenset({"model", "temperature", "top_p", "max_tokens", "stop"}) | LOCAL_CALL_PARAMS
)


def is_local(key: str) -> bool:
    """Whether a call's key is the package's or LangChain's own (:data:`LOCAL_CALL_PARAMS`,
    any ``ls_*``), never sent."""
    return key in LOCAL_CALL_PARAMS or key.startswith("ls_")


def wire_params(params: dict[str, Any], *, also: Iterable[str] = ()) -> dict[str, Any]:
    """A checked request's parameters without the local keys, nor those in ``also`` (what the
    backend handles itself: its ``_local_call_params``, or ``extra_body``, merged apart)."""
    skip = frozenset(also)
    return {k: v for k, v in params.items() if not is_local(k) and k not in skip}


def check_call_params(
    owner: str, keys: Sequence[str], allowed: frozenset[str], hints: dict[str, str]
) -> None:
    """Refuse a call's keys that ``owner`` does not take, naming them and listing what it takes
    (before any network call: a misspelled ``temprature`` is never sent, nor silently dropped)."""
    unknown = sorted(k for k in keys if k not in allowed and not k.startswith("ls_"))
    if not unknown:
        return
    for key in unknown:
        if key in hints:
            raise InvalidInputError(key, hints[key])
    import difflib

    close = {k: difflib.get_close_matches(k, sorted(allowed), n=1) for k in unknown}
    guesses = [f"{k!r} -> {m[0]!r}" for k, m in close.items() if m]
    guess = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    raise InvalidInputError(
        ", ".join(unknown),
        f"not a call parameter of {owner}{guess}; allowed: {', '.join(sorted(allowed))}",
    )


def check_extra_body(extra: Any) -> None:
    """A call's ``extra_body`` (where the backend takes one) is a dict, merged into the body
    last, as the openai SDK's; checked here only, before anything is sent."""
    if extra is not None and not isinstance(extra, dict):
        raise InvalidInputError("extra_body", f"must be a dict; got {type(extra).__name__}")


# ------------------------------------------------------------------ the shared surface


class ModelSurface(BaseModel):
    """Fit, counting and health: the extra surface every model of this package has."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    context_window: int | None = Field(default=None, gt=0)
    """Total tokens (prompt + output) the model takes; discovered from the backend if unset."""

    max_input_tokens: int | None = Field(default=None, gt=0)
    """Limit on prompt tokens where the backend sets one apart from the window."""

    max_output_tokens: int | None = Field(default=None, gt=0)
    """Limit on output tokens where the backend sets one apart from the window."""

    context_overflow: ContextOverflowPolicy = "raise"
    """What a call does when the prompt does not fit: raise, clamp max_tokens, or ignore."""

    health_timeout: float = Field(default=5.0, gt=0)
    """Seconds a health check may take, in all."""

    _backend: ClassVar[str] = "multillm"
    _call_params: ClassVar[frozenset[str]] = frozenset()
    """The keys a call may carry besides :data:`COMMON_CALL_PARAMS` (each backend declares its
    own: sampling keys, tools, tool_choice, response_format where taken); others are refused."""
    _call_param_hints: ClassVar[dict[str, str]] = {}
    """Keys refused with a reason of their own (a pointer to the class that takes them)."""
    _local_call_params: ClassVar[frozenset[str]] = frozenset()
    """Keys a call may carry that this backend handles itself, never sent as they are (besides
    :data:`LOCAL_CALL_PARAMS`): left out by :meth:`_wire_params`."""
    _limits: Limits | None = PrivateAttr(default=None)
    if TYPE_CHECKING:
        # Fields of the classes this surface is combined with (:class:`_Sampling`, declared
        # here for the type checker only: a pydantic field here would replace theirs).
        model_name: str
        max_tokens: int | None
        max_retries: int
    _limits_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _warned_unknown: bool = PrivateAttr(default=False)

    # ---- the keys a call may carry (checked in ``_start``, before anything is sent) ----
    def _allowed_call_params(self) -> frozenset[str]:
        """:data:`COMMON_CALL_PARAMS`, the fields the model sends with every call (its sampling
        mixins' and ``_param_fields``: what an instance sets, a call may set) and the backend's
        ``_call_params`` (a backend whose set depends on what is installed overrides this)."""
        return _allowed(type(self)) | self._call_params

    @final
    def _check_call_params(self, kwargs: dict[str, Any]) -> None:
        check_call_params(
            type(self).__name__, list(kwargs), self._allowed_call_params(), self._call_param_hints
        )
        check_extra_body(kwargs.get("extra_body"))

    @final
    def _wire_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """A checked request's parameters for the API: without :data:`LOCAL_CALL_PARAMS`,
        ``ls_*`` and the backend's ``_local_call_params``."""
        return wire_params(params, also=self._local_call_params)

    # ---- hooks (backends override) ----
    def _fetch_limits(self) -> Limits:
        """Limits the backend reports (may do I/O; called once)."""
        return Limits()

    async def _afetch_limits(self) -> Limits:
        return await asyncio.to_thread(self._fetch_limits)

    def _count_exact(self, prompt: Prompt) -> int | None:
        """The exact token count, or None where the backend cannot count."""
        return None

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        return await asyncio.to_thread(self._count_exact, prompt)

    def _count_bound(self, prompt: Prompt) -> int | None:
        """A proven upper bound on the count without I/O, or None."""
        return None

    def _max_token_bytes(self) -> int | None:
        """Bytes of the vocabulary's longest token (no network I/O), or None where unknown
        (then :data:`~langchain_multillm.fit.UNKNOWN_MAX_TOKEN_BYTES` is assumed)."""
        return None

    def _count_lower(self, prompt: Prompt) -> int:
        """A proven lower bound on the count, without I/O."""
        return lower_bound(prompt, self._max_token_bytes() or UNKNOWN_MAX_TOKEN_BYTES)

    def _secrets(self) -> list[str]:
        """This model's credentials (every ``SecretStr`` field): masked in any error that
        echoes them (:func:`~langchain_multillm.errors.redact`)."""
        return [
            v.get_secret_value()
            for name in type(self).model_fields
            if isinstance(v := getattr(self, name, None), SecretStr) and len(v) >= 4
        ]

    def _static_limits(self) -> Limits | None:
        """Limits known without I/O (a table, a setting), or None: they fill ``profile`` and the
        limit fields as soon as the model is built."""
        return None

    @abc.abstractmethod
    def _health(self) -> HealthReport:
        """Liveness and readiness without a billed call (required). May raise: ``health``
        turns an exception into a ``down`` report."""

    async def _ahealth(self) -> HealthReport:
        return await asyncio.to_thread(self._health)

    def _deep_health(self) -> HealthReport:
        """``health(deep=True)``: a check that may cost (Azure: a one-token chat, billed), for
        a backend whose free check cannot tell readiness; by default the free check."""
        return self._health()

    async def _adeep_health(self) -> HealthReport:
        """Async twin of :meth:`_deep_health` (by default the free check, or the sync deep
        check in a thread where only that one is filled)."""
        if type(self)._deep_health is ModelSurface._deep_health:
            return await self._ahealth()
        return await asyncio.to_thread(self._deep_health)

    def _model_label(self) -> str | None:
        return self.model_name

    # ---- limits ----
    @model_validator(mode="after")
    def _limits_without_io(self) -> Self:
        static = self._static_limits()
        if static is not None and static.known:
            self._merge_limits(static)
        return self

    def _merge_limits(self, found: Limits) -> Limits:
        limits = Limits(
            context_window=self.context_window or found.context_window,
            max_input_tokens=self.max_input_tokens or found.max_input_tokens,
            max_output_tokens=self.max_output_tokens or found.max_output_tokens,
        )
        self._limits = limits
        self._on_limits(limits)
        return limits

    def _on_limits(self, limits: Limits) -> None:
        """Fill the limit fields and LangChain's ``profile`` once the limits are known.

        ``profile["max_input_tokens"]`` is the input limit, else the window (a prompt can take
        no more); ``profile["max_output_tokens"]`` only where the backend limits output apart
        (a window alone does not say how much of it an answer may take).
        """
        for name in ("context_window", "max_input_tokens", "max_output_tokens"):
            if getattr(self, name) is None and getattr(limits, name) is not None:
                object.__setattr__(self, name, getattr(limits, name))
        if hasattr(self, "profile"):
            profile = dict(getattr(self, "profile", None) or {})
            max_in = limits.max_input_tokens or limits.context_window
            if max_in is not None:
                profile.setdefault("max_input_tokens", max_in)
            if limits.max_output_tokens is not None:
                profile.setdefault("max_output_tokens", limits.max_output_tokens)
            if profile:
                object.__setattr__(self, "profile", profile)

    @property
    def _retries(self) -> int:
        return self.max_retries

    @final
    def get_limits(self) -> Limits:
        """The model's limits: what was set, else what the backend reports (asked once)."""
        if self._limits is None:
            with self._limits_lock:
                if self._limits is None:
                    return self._merge_limits(call(self._retries, self._fetch_limits))
        assert self._limits is not None
        return self._limits

    @final
    async def aget_limits(self) -> Limits:
        """Async twin of :meth:`get_limits`."""
        if self._limits is None:
            return self._merge_limits(await acall(self._retries, self._afetch_limits))
        return self._limits

    # ---- counting and fit ----
    @abc.abstractmethod
    def _as_prompt(self, x: PromptInput, tools: Sequence[Any] | None, *, for_fit: bool) -> Prompt:
        """What a call's input counts as (filled by the chat and completion bases)."""

    @final
    def count_tokens(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int:
        """Tokens in ``x`` (text or messages, with the tools that would be bound).

        Exact where the backend can tokenize; otherwise a proven upper bound.
        """
        prompt = self._as_prompt(x, tools, for_fit=False)
        n = self._count_exact(prompt)
        return n if n is not None else self._fallback_bound(prompt)

    @final
    async def acount_tokens(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int:
        """Async twin of :meth:`count_tokens`."""
        prompt = self._as_prompt(x, tools, for_fit=False)
        n = await self._acount_exact(prompt)
        return n if n is not None else self._fallback_bound(prompt)

    def count_tokens_exact(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int | None:
        """Tokens in ``x`` counted exactly, or None where this backend cannot count exactly
        (never a bound: :meth:`count_tokens` falls back to one)."""
        return self._count_exact(self._as_prompt(x, tools, for_fit=False))

    async def acount_tokens_exact(
        self, x: PromptInput, tools: Sequence[Any] | None = None
    ) -> int | None:
        """Async twin of :meth:`count_tokens_exact`."""
        return await self._acount_exact(self._as_prompt(x, tools, for_fit=False))

    @final
    def _fallback_bound(self, prompt: Prompt) -> int:
        bound = self._count_bound(prompt)
        if bound is None:
            raise MultiLLMError(
                "this backend can neither count tokens nor bound the count", backend=self._backend
            )
        return bound

    @final
    def _unknown(self, prompt: Prompt, max_tokens: int | None) -> FitReport:
        if not self._warned_unknown:
            self._warned_unknown = True
            warnings.warn(
                f"{type(self).__name__}: the context window is unknown, so prompts are not "
                "checked before sending; set context_window=... to check them",
                MultiLLMWarning,
                stacklevel=4,
            )
        bound = self._count_bound(prompt)
        return decide(bound or 0, exact=False, max_tokens=max_tokens, limits=Limits())

    @final
    def _fit(
        self, prompt: Prompt, max_tokens: int | None, limits: Limits, *, clamp: bool
    ) -> FitReport | None:
        """Decide with the bounds where they can; None means an exact count is needed.

        The upper bound may only prove a fit, the lower bound only the opposite. With ``clamp``
        the lower bound refuses only a prompt that cannot fit alone (the room left for the
        answer needs the exact count).
        """
        if not limits.known:
            return self._unknown(prompt, max_tokens)
        bound = self._count_bound(prompt)
        if bound is not None:
            report = decide(bound, exact=False, max_tokens=max_tokens, limits=limits)
            if report.fits:
                return report
        low = self._count_lower(prompt)
        report = decide(
            low, exact=False, max_tokens=None if clamp else max_tokens, limits=limits,
            counted="lower_bound",
        )  # fmt: skip
        if not report.fits:
            return replace(report, max_tokens=max_tokens, max_tokens_effective=max_tokens)
        return None

    @final
    def _fit_exact(
        self,
        prompt: Prompt,
        n: int | None,
        max_tokens: int | None,
        limits: Limits,
        *,
        clamp: bool,
    ) -> FitReport:
        if n is not None:
            return decide(n, exact=True, max_tokens=max_tokens, limits=limits)
        return undecided(
            self._count_bound(prompt),
            self._count_lower(prompt),
            max_tokens=max_tokens,
            limits=limits,
            clamp=clamp,
        )

    @final
    def _report(self, prompt: Prompt, max_tokens: int | None, *, clamp: bool = False) -> FitReport:
        """The fit report: the cheap bounds if they decide, else an exact count (retried)."""
        limits = self.get_limits()
        report = self._fit(prompt, max_tokens, limits, clamp=clamp)
        if report is None:
            n = call(self._retries, self._count_exact, prompt)
            report = self._fit_exact(prompt, n, max_tokens, limits, clamp=clamp)
        return report

    @final
    async def _areport(
        self, prompt: Prompt, max_tokens: int | None, *, clamp: bool = False
    ) -> FitReport:
        """Async twin of :meth:`_report`."""
        limits = await self.aget_limits()
        report = self._fit(prompt, max_tokens, limits, clamp=clamp)
        if report is None:
            n = await acall(self._retries, self._acount_exact, prompt)
            report = self._fit_exact(prompt, n, max_tokens, limits, clamp=clamp)
        return report

    @final
    def _own_max_tokens(self, max_tokens: int | None) -> int | None:
        return max_tokens if max_tokens is not None else self.max_tokens

    @final
    def check_fit(
        self, x: PromptInput, max_tokens: int | None = None, tools: Sequence[Any] | None = None
    ) -> FitReport:
        """Whether ``x`` plus ``max_tokens`` of output fits the model's limits (no generation).

        ``max_tokens=None`` checks the model's own ``max_tokens``, as a call would; where the
        model has none, the prompt alone (leaving one token of room).
        """
        prompt = self._as_prompt(x, tools, for_fit=True)
        return self._report(prompt, self._own_max_tokens(max_tokens))

    @final
    async def acheck_fit(
        self, x: PromptInput, max_tokens: int | None = None, tools: Sequence[Any] | None = None
    ) -> FitReport:
        """Async twin of :meth:`check_fit`."""
        prompt = self._as_prompt(x, tools, for_fit=True)
        return await self._areport(prompt, self._own_max_tokens(max_tokens))

    @final
    def is_valid_prompt(self, x: PromptInput) -> bool:
        """Whether a call with ``x`` would be accepted: ``check_fit(x).fits`` with the model's
        own ``max_tokens``, under its ``context_overflow`` policy (``clamp`` accepts what it
        can clamp, ``ignore`` everything)."""
        if self.context_overflow == "ignore":
            return True
        clamp = self.context_overflow == "clamp"
        prompt = self._as_prompt(x, None, for_fit=True)
        return self._accepted(self._report(prompt, self._own_max_tokens(None), clamp=clamp))

    @final
    async def ais_valid_prompt(self, x: PromptInput) -> bool:
        """Async twin of :meth:`is_valid_prompt`."""
        if self.context_overflow == "ignore":
            return True
        clamp = self.context_overflow == "clamp"
        prompt = self._as_prompt(x, None, for_fit=True)
        report = await self._areport(prompt, self._own_max_tokens(None), clamp=clamp)
        return self._accepted(report)

    @final
    def _accepted(self, report: FitReport) -> bool:
        try:
            enforce(report, self.context_overflow, backend=self._backend)
        except ContextWindowExceededError:
            return False
        return True

    # ---- health ----
    @final
    def health(self, deep: bool = False) -> HealthReport:
        """Liveness and readiness, without a billed call. Never raises.

        ``deep=True`` also runs the check that may cost, where a backend needs one to know
        readiness (Azure OpenAI: a one-token chat to the deployment, **billed**); on the other
        backends it is the same check as ``deep=False``.
        """
        started = time.perf_counter()
        try:
            return self._deep_health() if deep else self._health()
        except Exception as exc:
            return down(started, self._model_label(), describe(exc))

    @final
    async def ahealth(self, deep: bool = False) -> HealthReport:
        """Async twin of :meth:`health` (within ``health_timeout``); also never raises."""
        started = time.perf_counter()
        try:
            probe = self._adeep_health() if deep else self._ahealth()
            return await asyncio.wait_for(probe, timeout=self.health_timeout)
        except asyncio.TimeoutError:
            return down(started, self._model_label(), f"no answer within {self.health_timeout}s")
        except Exception as exc:
            return down(started, self._model_label(), describe(exc))

    @final
    def is_alive(self) -> bool:
        """``health().alive``, within ``health_timeout``."""
        return self.health().alive

    @final
    async def ais_alive(self) -> bool:
        """Async twin of :meth:`is_alive`."""
        return (await self.ahealth()).alive

    # ---- the policy, before every call ----
    @final
    def _policy(self, kwargs: dict[str, Any]) -> ContextOverflowPolicy:
        return check_policy(kwargs.pop("context_overflow", self.context_overflow))

    @final
    def _apply(
        self, report: FitReport, policy: ContextOverflowPolicy, params: dict[str, Any]
    ) -> FitReport:
        report = enforce(report, policy, backend=self._backend)
        if report.max_tokens_effective != report.max_tokens and report.max_tokens_effective:
            params["max_tokens"] = report.max_tokens_effective
        return report

    @final
    def _gate(
        self, prompt: Prompt, params: dict[str, Any], policy: ContextOverflowPolicy
    ) -> FitReport:
        """Check the fit before a call and apply the policy (``params`` may be clamped)."""
        if policy == "ignore":
            return UNCHECKED
        report = self._report(prompt, params.get("max_tokens"), clamp=policy == "clamp")
        return self._apply(report, policy, params)

    @final
    async def _agate(
        self, prompt: Prompt, params: dict[str, Any], policy: ContextOverflowPolicy
    ) -> FitReport:
        """Async twin of :meth:`_gate`."""
        if policy == "ignore":
            return UNCHECKED
        report = await self._areport(prompt, params.get("max_tokens"), clamp=policy == "clamp")
        return self._apply(report, policy, params)


UNCHECKED = FitReport(
    fits=True,
    prompt_tokens=0,
    exact=False,
    max_tokens=None,
    max_tokens_effective=None,
    context_window=None,
    max_input_tokens=None,
    max_output_tokens=None,
    room=None,
    reason='not checked (context_overflow="ignore")',
)


def merge_params(
    defaults: dict[str, Any], kwargs: dict[str, Any], stop: list[str] | None
) -> dict[str, Any]:
    """Instance defaults overridden by per-call kwargs and ``stop``; checked before sending."""
    params = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    if stop is not None:
        params["stop"] = stop
    if not params.get("stop"):
        params.pop("stop", None)
    check_sampling(params)
    return params


def first_then_rest(max_retries: int, factory: Any, run_manager: Any = None) -> Iterator[Any]:
    """Run ``factory()`` with retries until its first item arrives, then yield everything
    (each item reported to ``run_manager`` as a new token)."""
    first, it = first_of(max_retries, factory)
    if first is None:
        raise IncompleteResponseError("the stream ended before any output")
    for item in _chain(first, it):
        if run_manager:
            run_manager.on_llm_new_token(item.text, chunk=item)
        yield item


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


async def afirst_then_rest(
    max_retries: int, factory: Any, run_manager: Any = None
) -> AsyncIterator[Any]:
    """Async twin of :func:`first_then_rest`."""
    first, ait = await afirst_of(max_retries, factory)
    if first is None:
        raise IncompleteResponseError("the stream ended before any output")
    item = first
    while True:
        if run_manager:
            await run_manager.on_llm_new_token(item.text, chunk=item)
        yield item
        try:
            item = await ait.__anext__()
        except StopAsyncIteration:
            return


# ------------------------------------------------------------------ chat


# Settings never part of a model's identity (credentials, headers, OAuth2 settings), and
# LangChain's own fields (callbacks, cache, tags, ...).
_NOT_IDENTITY = re.compile(
    r"(^|_)(api_key|key|secret|token|password|passwd|credentials?|headers?|auth\w*)($|_)"
)
_LANGCHAIN_FIELDS = frozenset(BaseChatModel.model_fields) | frozenset(BaseLLM.model_fields)
# Settings that change how a call is made or checked, not what it answers (some are filled from
# the server after the first call: they must not change the identity).
_NOT_ANSWER = frozenset(
    {
        "context_window",
        "max_input_tokens",
        "max_output_tokens",
        "max_model_len",
        "context_overflow",
        "health_timeout",
        "timeout",
        "max_retries",
        "streaming",
        "stream_usage",
        "default_structured_method",
        "verify_ssl",
        "profile",
    }
)


def _settings_identity(model: BaseModel) -> dict[str, Any]:
    """A model's settings that are plain JSON values (not None): what, with the sampling
    parameters, makes its answers what they are (the server's URL, the GGUF path, the seed,
    top_k, ...). Credentials, headers, SecretStr fields, objects and LangChain's own fields are
    left out."""
    out: dict[str, Any] = {}
    for name in _identity_fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            continue
        if isinstance(value, (str, int, float, bool)):
            out[name] = value
        elif isinstance(value, (dict, list)):
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue  # a secret or an object inside: not a setting here
            out[name] = _scrub(value)
    return out


@functools.cache
def _identity_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    return tuple(
        name
        for name in cls.model_fields
        if name not in _LANGCHAIN_FIELDS
        and name not in _NOT_ANSWER
        and not _NOT_IDENTITY.search(name)
    )


def _scrub(value: Any) -> Any:
    """``value`` without the entries of its mappings whose key names a credential or header."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _NOT_IDENTITY.search(str(k).lower())}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


# ------------------------------------------------------------------ sampling fields
#
# Each family of sampling settings is declared once, as a mixin a backend lists among its bases
# (``class ChatX(Penalties, Seed, MultiLLMChatModel)``). Their fields are sent with every call
# (None left out, :meth:`_Sampling._default_params`) under the same names a call takes (also
# accepted per call: :meth:`ModelSurface._allowed_call_params`); a backend whose API names one
# differently renames it where it builds its body. A backend that bounds a field differently
# (TGI's seed is unsigned) redeclares that field only.


class Seed(BaseModel):
    """``seed``."""

    seed: int | None = None
    """Seed for sampling, for repeatable outputs (best effort on a hosted API)."""


class Penalties(BaseModel):
    """``presence_penalty`` and ``frequency_penalty`` (OpenAI's)."""

    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty on tokens already present (-2 to 2)."""

    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty by how often a token appeared (-2 to 2)."""


class RepetitionPenalty(BaseModel):
    """``repetition_penalty`` (Hugging Face's, llama.cpp's ``repeat_penalty``)."""

    repetition_penalty: float | None = Field(default=None, gt=0)
    """Penalty (>1) on tokens already in the prompt or output; 1.0 means none."""


class TopK(BaseModel):
    """``top_k``."""

    top_k: int | None = None
    """Sample from the k most likely tokens (None: the backend's default)."""


class MinP(BaseModel):
    """``min_p``."""

    min_p: float | None = Field(default=None, ge=0, le=1)
    """Drop tokens below this fraction of the top token's probability."""


class TypicalP(BaseModel):
    """``typical_p``."""

    typical_p: float | None = Field(default=None, gt=0, lt=1)
    """Typical decoding mass, in (0, 1)."""


class ExtraBody(BaseModel):
    """``extra_body``: fields for the request body that the class does not name. On the
    instance, its entries are sent with every call; per call, a dict merged into the body last
    (checked to be a dict in one place, :func:`check_call_params`)."""

    extra_body: dict[str, Any] | None = None
    """Other fields for the request body (for example vLLM's ``structured_outputs``)."""


SAMPLING_MIXINS: tuple[type[BaseModel], ...] = (
    Seed,
    Penalties,
    RepetitionPenalty,
    TopK,
    MinP,
    TypicalP,
)
# The mixins' fields, in the order their values are sent.
SAMPLING_FIELDS: tuple[str, ...] = tuple(f for m in SAMPLING_MIXINS for f in m.model_fields)
# The fields every model has (``_Sampling``), sent the same way.
BASE_SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "stop")


@functools.cache
def sent_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``cls`` whose values go with every call: the common four, those of the
    sampling mixins it lists among its bases, and its own ``_param_fields``."""
    own: tuple[str, ...] = getattr(cls, "_param_fields", ())
    mixins = tuple(f for m in SAMPLING_MIXINS if issubclass(cls, m) for f in m.model_fields)
    return (*BASE_SAMPLING_FIELDS, *mixins, *own)


@functools.cache
def _allowed(cls: type[BaseModel]) -> frozenset[str]:
    """The keys any call of ``cls`` may carry before its ``_call_params``: the common ones,
    what it sends with every call, and ``extra_body`` where it has :class:`ExtraBody`."""
    extra = {"extra_body"} if issubclass(cls, ExtraBody) else set()
    return COMMON_CALL_PARAMS | frozenset(sent_fields(cls)) | extra


class _Sampling(BaseModel):
    """Fields every model has, chat or completion."""

    _param_fields: ClassVar[tuple[str, ...]] = ()
    """The backend's own fields sent with every call besides the sampling mixins' (TGI's
    ``grammar``, Gemini's ``thinking_budget``), by name; a call may set them too."""

    model_name: str = Field(alias="model")
    """Name of the model the backend serves."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature (0-2); None leaves the backend's default."""

    top_p: float | None = Field(default=None, gt=0, le=1)
    """Nucleus sampling mass, in (0, 1]; None leaves the backend's default."""

    max_tokens: int | None = Field(default=None, gt=0)
    """Most tokens to generate; None lets the backend decide (up to the room left)."""

    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Sequences that end generation."""

    max_retries: int = Field(default=2, ge=0)
    """Retries of a retryable failure (never after the first streamed token)."""

    streaming: bool = False
    """Whether ``invoke`` streams underneath (the result is the same)."""

    @field_validator("model_name")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        return check_model_name(v)

    def _default_params(self) -> dict[str, Any]:
        """The instance's settings sent with every call: the common sampling fields, the
        sampling mixins' and ``_param_fields`` (None and an empty ``stop`` left out), then the
        entries of an ``extra_body`` (:class:`ExtraBody`)."""
        params: dict[str, Any] = {}
        for name in sent_fields(type(self)):
            value = getattr(self, name)
            if value is not None and not (name == "stop" and not value):
                params[name] = value
        if isinstance(self, ExtraBody) and self.extra_body:
            params.update(self.extra_body)
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """What tells this model's answers apart: its plain settings (``_settings_identity``)
        and sampling parameters. LangChain's llm caches (``set_llm_cache``) key on it, so two
        models that may answer differently never share an entry, and no credential is in it."""
        return {**_settings_identity(self), "model_name": self.model_name, **self._default_params()}


class MultiLLMChatModel(ModelSurface, _Sampling, BaseChatModel):
    """Base of this package's chat models: the LangChain chat contract plus the surface."""

    # An unknown setting is an error that names it, not silently ignored (LangChain's base
    # classes ignore extras, and their config comes later in the MRO: restate it here).
    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")

    stream_usage: bool = True
    """Whether streams carry token usage (asked of the server, or counted exactly)."""

    _batches_in_engine: ClassVar[bool] = False
    """Whether the backend's engine batches concurrent requests itself (in-process vLLM): then
    a sync ``batch`` / ``generate`` of several inputs runs them all at once on the async path
    (:func:`run_async`) instead of LangChain's pool of a few worker threads."""

    # ---- hooks for chat backends ----
    @abc.abstractmethod
    def _chat(self, req: ChatRequest) -> ChatResult:
        """One whole answer (required)."""

    async def _achat(self, req: ChatRequest) -> ChatResult:
        return await asyncio.to_thread(self._chat, req)

    @abc.abstractmethod
    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        """The answer as it comes (required); the last chunk carries ``finish_reason``."""

    @abc.abstractmethod
    def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        """Async twin of :meth:`_chat_stream` (required: an async generator)."""

    # ---- LangChain plumbing ----
    @final
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = {**self._default_params(), **{k: v for k, v in kwargs.items() if v is not None}}
        ls = LangSmithParams(
            ls_provider=self._backend,
            ls_model_name=params.get("model") or self.model_name,
            ls_model_type="chat",
        )
        if params.get("temperature") is not None:
            ls["ls_temperature"] = params["temperature"]
        if params.get("max_tokens") is not None:
            ls["ls_max_tokens"] = params["max_tokens"]
        if stop or params.get("stop"):
            ls["ls_stop"] = stop or params["stop"]
        return ls

    @final
    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the backend's tokenizer (same as :meth:`count_tokens`)."""
        return self.count_tokens(text)

    @final
    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens the messages take as a prompt (same as :meth:`count_tokens`)."""
        return self.count_tokens(messages, tools=tools)

    @final
    def _as_prompt(self, x: PromptInput, tools: Sequence[Any] | None, *, for_fit: bool) -> Prompt:
        tool_dicts = self._format_tools(tools) if tools else None
        if isinstance(x, PromptValue):
            return Prompt(messages=x.to_messages(), tools=tool_dicts)
        if isinstance(x, str):
            if for_fit or tool_dicts:
                return Prompt(messages=[HumanMessage(x)], tools=tool_dicts)
            return Prompt(text=x)
        return Prompt(messages=convert_to_messages(x), tools=tool_dicts)

    def _format_tools(self, tools: Sequence[Any]) -> list[dict[str, Any]]:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return [convert_to_openai_tool(t) for t in tools]

    @final
    def _start(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> tuple[ChatRequest, ContextOverflowPolicy, Prompt]:
        check_messages(messages)
        self._check_call_params(kwargs)
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)  # LangChain's own switch, already acted on
        policy = self._policy(kwargs)
        tools = kwargs.pop("tools", None)
        params = merge_params(self._default_params(), kwargs, stop)
        req = ChatRequest(
            messages=messages, params=params, fit=UNCHECKED, stream=stream, tools=tools
        )
        self._check_offline(req)
        return req, policy, Prompt(messages=messages, tools=tools)

    def _check_offline(self, req: ChatRequest) -> None:
        """Hook: refuse a request this backend can never serve, before any network call
        (the fit check may already ask the server). Raise :class:`InvalidInputError`."""

    @final
    def _prepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> ChatRequest:
        req, policy, prompt = self._start(messages, stop, kwargs, stream=stream)
        req.fit = self._gate(prompt, req.params, policy)
        return req

    @final
    async def _aprepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> ChatRequest:
        req, policy, prompt = self._start(messages, stop, kwargs, stream=stream)
        req.fit = await self._agate(prompt, req.params, policy)
        return req

    @final
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        req = self._prepare(messages, stop, kwargs, stream=False)
        return call(self.max_retries, self._chat, req)

    @final
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        req = await self._aprepare(messages, stop, kwargs, stream=False)
        return await acall(self.max_retries, self._achat, req)

    @final
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        req = self._prepare(messages, stop, kwargs, stream=True)
        yield from first_then_rest(self.max_retries, lambda: self._chat_stream(req), run_manager)

    @final
    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        req = await self._aprepare(messages, stop, kwargs, stream=True)
        async for chunk in afirst_then_rest(
            self.max_retries, lambda: self._achat_stream(req), run_manager
        ):
            yield chunk

    # ---- many inputs at once ----
    @final
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch``; where the engine batches itself (``_batches_in_engine``),
        every input goes to it at once, not through a thread pool of a few workers (each input
        keeps its own settings and fit check)."""
        if self._batches_in_engine and len(inputs) > 1:
            return run_async(
                self.abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
            )
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    @final
    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        """LangChain's ``generate``; where the engine batches itself (``_batches_in_engine``),
        the conversations are in flight in it together."""
        if self._batches_in_engine and len(messages) > 1:
            return run_async(self.agenerate(messages, stop=stop, callbacks=callbacks, **kwargs))
        return super().generate(messages, stop=stop, callbacks=callbacks, **kwargs)


# ------------------------------------------------------------------ completion


class MultiLLMCompletionModel(ModelSurface, _Sampling, BaseLLM):
    """Base of this package's completion models (text in, text out)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")

    _batches_in_engine: ClassVar[bool] = False
    """Whether the backend's engine batches concurrent requests itself (in-process vLLM): then
    a sync call with several prompts runs them all at once on the async path
    (:func:`run_async`) instead of one by one."""

    @abc.abstractmethod
    def _complete(self, req: CompletionRequest) -> Generation:
        """One whole completion (required)."""

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        return await asyncio.to_thread(self._complete, req)

    @abc.abstractmethod
    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        """The completion as it comes (required); the last chunk carries ``finish_reason``."""

    @abc.abstractmethod
    def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        """Async twin of :meth:`_complete_stream` (required: an async generator)."""

    @final
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        ls = LangSmithParams(
            ls_provider=self._backend,
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="llm",
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            ls["ls_max_tokens"] = max_tokens
        return ls

    @final
    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the backend's tokenizer."""
        return self.count_tokens(text)

    @final
    def _as_prompt(self, x: PromptInput, tools: Sequence[Any] | None, *, for_fit: bool) -> Prompt:
        if tools:
            raise InvalidInputError("tools", "a completion model takes no tools")
        if isinstance(x, PromptValue):
            return Prompt(text=x.to_string())
        if isinstance(x, str):
            return Prompt(text=x)
        from langchain_core.messages import get_buffer_string

        return Prompt(text=get_buffer_string(convert_to_messages(x)))

    @final
    def _start(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any], *, stream: bool
    ) -> tuple[CompletionRequest, ContextOverflowPolicy]:
        if not isinstance(prompt, str):
            raise InvalidInputError("prompt", f"must be text; got {type(prompt).__name__}")
        self._check_call_params(kwargs)
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)
        policy = self._policy(kwargs)
        params = merge_params(self._default_params(), kwargs, stop)
        req = CompletionRequest(prompt=prompt, params=params, fit=UNCHECKED, stream=stream)
        self._check_offline(req)
        return req, policy

    def _check_offline(self, req: CompletionRequest) -> None:
        """Hook: refuse a request this backend can never serve, before any network call
        (the fit check may already ask the server). Raise :class:`InvalidInputError`."""

    @final
    def _prepare(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any], *, stream: bool
    ) -> CompletionRequest:
        req, policy = self._start(prompt, stop, kwargs, stream=stream)
        req.fit = self._gate(Prompt(text=prompt), req.params, policy)
        return req

    @final
    async def _aprepare(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any], *, stream: bool
    ) -> CompletionRequest:
        req, policy = self._start(prompt, stop, kwargs, stream=stream)
        req.fit = await self._agate(Prompt(text=prompt), req.params, policy)
        return req

    @final
    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self._batches_in_engine and len(prompts) > 1 and not self.streaming:
            # All prompts at once on the async path (the engine batches them).
            return run_async(self._agenerate(prompts, stop, None, **kwargs))
        gens: list[list[Generation]] = []
        for prompt in prompts:
            if self.streaming:
                chunks = list(self._stream(prompt, stop, run_manager, **kwargs))
                gens.append([join_chunks(chunks)])
                continue
            req = self._prepare(prompt, stop, kwargs, stream=False)
            gens.append([call(self.max_retries, self._complete, req)])
        return LLMResult(generations=gens, llm_output={"model_name": self.model_name})

    @final
    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        async def one(prompt: str) -> Generation:
            if self.streaming:
                return join_chunks(
                    [c async for c in self._astream(prompt, stop, run_manager, **kwargs)]
                )
            req = await self._aprepare(prompt, stop, kwargs, stream=False)
            return await acall(self.max_retries, self._acomplete, req)

        gens = await asyncio.gather(*(one(p) for p in prompts))
        return LLMResult(
            generations=[[g] for g in gens], llm_output={"model_name": self.model_name}
        )

    @final
    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        req = self._prepare(prompt, stop, kwargs, stream=True)
        yield from first_then_rest(
            self.max_retries, lambda: self._complete_stream(req), run_manager
        )

    @final
    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        req = await self._aprepare(prompt, stop, kwargs, stream=True)
        async for chunk in afirst_then_rest(
            self.max_retries, lambda: self._acomplete_stream(req), run_manager
        ):
            yield chunk


def run_async(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion from sync code (even inside a running loop, e.g. Jupyter),
    on a fresh loop in one worker thread; the caller's context (LangChain's tracing and parent
    run live in context variables) goes with it. Interrupted (Ctrl-C in a notebook), the
    coroutine is cancelled instead of awaited to its end."""
    running: dict[str, Any] = {}

    async def main() -> Any:
        running["task"], running["loop"] = asyncio.current_task(), asyncio.get_running_loop()
        return await coro

    ctx = contextvars.copy_context()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="multillm-batch")
    fut = pool.submit(ctx.run, asyncio.run, main())
    try:
        return fut.result()
    except BaseException:
        if not fut.done() and "task" in running:
            running["loop"].call_soon_threadsafe(running["task"].cancel)
        raise
    finally:
        pool.shutdown(wait=False)


def join_chunks(chunks: list[GenerationChunk], *, backend: str | None = None) -> Generation:
    """A completion's streamed chunks as one generation (none at all is an error)."""
    if not chunks:
        raise IncompleteResponseError("the stream ended before any output", backend=backend)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return Generation(text=total.text, generation_info=total.generation_info)


# LangChain asks on every call whether ``_generate`` / ``_agenerate`` take ``run_manager``, with
# ``inspect.signature`` (about 60 µs a call here, a quarter of what ``ainvoke`` costs besides
# the request). A signature kept on the function (``__signature__``) is what inspect returns
# at once; it is the function's own, so the answer is the same.
for _fn in (
    MultiLLMChatModel._generate,
    MultiLLMChatModel._agenerate,
    MultiLLMCompletionModel._generate,
    MultiLLMCompletionModel._agenerate,
):
    setattr(_fn, "__signature__", inspect.signature(_fn))  # noqa: B010
