"""ChatRouter: one chat model over several, chosen per call by fit, breaker state and strategy.

Routing is decided before anything is sent. For each call:

1. candidates whose breaker is open are passed over (a breaker opens after
   ``failure_threshold`` consecutive retryable failures, or when the free health check says the
   candidate is not alive; after ``cooldown_s`` one probe, a health check and never a billed
   generation, closes it again when it passes);
2. the strategy orders the rest (``least_busy``, ``round_robin``, ``weighted``, ``ordered``);
   ties go to the candidate with the fewest calls in flight;
3. walking that order, each candidate's own fit check decides whether the prompt and its
   ``max_tokens`` fit (the cheap bounds first, one exact count only where they straddle the
   limit); one that cannot fit is passed over with no request sent to it; when none fits,
   :class:`~langchain_multillm.errors.ContextWindowExceededError` names each one's limit;
4. a retryable failure before the first streamed token moves the call to the next candidate,
   after the retry policy's backoff (:func:`langchain_multillm._retry.delay`); a non-retryable
   one (400, authentication, content filter, ...) is raised at once; after the first token the
   stream's own error is raised as it is.

A candidate is a chat model of this package, any LangChain chat model, or one wrapped by
``bind`` / ``with_config`` / ``with_retry`` / ``with_fallbacks`` (as the chains take them).
A model of this package reached through plain ``bind`` calls is called through its hooks: its
fit check runs once, the router's, and it is tried once per call (the router moves on instead
of retrying it). Other candidates are called through ``invoke`` / ``stream``, and only their
first model's limits are checked beforehand (a model of another package is assumed to fit).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.exceptions import ModelError
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.base import RunnableBinding, RunnableBindingBase
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from langchain_multillm._base import (
    UNCHECKED,
    ChatRequest,
    ModelSurface,
    MultiLLMChatModel,
    PromptInput,
)
from langchain_multillm._openai import ToolsAndStructuredOutput
from langchain_multillm._retry import INITIAL_DELAY_S, delay
from langchain_multillm.errors import (
    BackendUnavailableError,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
)
from langchain_multillm.fit import FitReport, Limits, decide
from langchain_multillm.health import HealthReport

__all__ = ["BreakerState", "CandidateState", "ChatRouter", "Strategy"]

Strategy = Literal["least_busy", "round_robin", "weighted", "ordered"]
STRATEGIES: tuple[str, ...] = ("least_busy", "round_robin", "weighted", "ordered")
BreakerState = Literal["closed", "open", "probing"]
WRAPPERS = "bind, with_config, with_retry or with_fallbacks"
# Where the answer came from: a key of the message's response_metadata.
ROUTED_TO = "router_candidate"


@dataclass(frozen=True)
class CandidateState:
    """One candidate as :meth:`ChatRouter.state` shows it."""

    name: str
    breaker: BreakerState
    """``closed`` (in rotation), ``open`` (passed over until its cooldown ends) or ``probing``
    (its cooldown ended and a health check is deciding)."""
    consecutive_failures: int
    in_flight: int
    calls: int
    """Calls sent to it (fit checks that passed it over are not calls)."""
    failures: int
    """Calls that failed with a retryable error or a cut stream, in all."""
    times_opened: int
    last_error: str | None
    """Class name of the last error it raised, or None."""
    last_health: str | None
    """The last health report (``str(HealthReport)``), or None if never checked."""
    reopens_in_s: float | None
    """Seconds until an open breaker lets a probe through (0 when due), else None."""
    context_window: int | None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ModelError) and bool(getattr(exc, "is_retryable", False))


def _server_failure(exc: BaseException) -> bool:
    """What counts toward a breaker: a retryable error, or a stream the server cut."""
    return _retryable(exc) or isinstance(exc, IncompleteResponseError)


def _leaf(runnable: Any, outer: dict[str, Any], where: str) -> tuple[BaseChatModel, dict[str, Any]]:
    """The chat model a candidate calls first, with the keyword arguments bound on the way."""
    if isinstance(runnable, BaseChatModel):
        return runnable, outer
    if isinstance(runnable, RunnableBindingBase):
        return _leaf(runnable.bound, {**runnable.kwargs, **outer}, where)
    if isinstance(runnable, RunnableWithFallbacks):
        return _leaf(runnable.runnable, outer, where)
    raise InvalidInputError(
        where,
        f"must be a LangChain chat model, or one wrapped by {WRAPPERS}; "
        f"got {type(runnable).__name__}",
    )


def _direct(runnable: Any) -> bool:
    """Whether the candidate is a model of this package behind plain ``bind`` calls only (no
    config, no retry or fallbacks around it): then it is called through its hooks."""
    while isinstance(runnable, RunnableBinding):  # bind; with_retry is no RunnableBinding
        if runnable.config or runnable.config_factories:
            return False
        runnable = runnable.bound
    return isinstance(runnable, MultiLLMChatModel)


@dataclass
class _Prepared:
    """A candidate ready to be called: the request (direct) or nothing (through invoke)."""

    req: ChatRequest | None


class _Candidate:
    """A candidate and its breaker (mutated under the router's lock only)."""

    def __init__(self, index: int, runnable: Runnable[Any, Any], name: str, weight: float) -> None:
        self.index = index
        self.runnable = runnable
        self.name = name
        self.weight = weight
        where = f"models[{index}]"
        self.model, self.kwargs = _leaf(runnable, {}, where)
        self.surface: ModelSurface | None = (
            self.model if isinstance(self.model, ModelSurface) else None
        )
        self.direct = _direct(runnable)
        self.breaker: BreakerState = "closed"
        self.consecutive = 0
        self.in_flight = 0
        self.calls = 0
        self.failures = 0
        self.times_opened = 0
        self.open_until = 0.0
        self.current = 0.0  # smooth weighted round robin
        self.last_error: str | None = None
        self.last_health: str | None = None

    # ---- fit (before anything is sent) ----
    def _merged(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**self.kwargs, **kwargs} if self.kwargs else kwargs

    def prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any], *,
        stream: bool,
    ) -> _Prepared:  # fmt: skip
        """The candidate's own gate: raises ContextWindowExceededError if it cannot fit."""
        model = self.model
        if isinstance(model, ChatRouter):
            _refuse(model.check_fit(messages, **self._router_args(kwargs)))
            return _Prepared(None)
        if not isinstance(model, MultiLLMChatModel):
            return _Prepared(None)
        req, policy, prompt = model._start(messages, stop, self._merged(kwargs), stream=stream)
        if policy != "ignore":
            report = model._report(prompt, req.params.get("max_tokens"), clamp=policy == "clamp")
            req.fit = model._apply(report, policy, req.params)
        else:
            req.fit = UNCHECKED
        return _Prepared(req if self.direct else None)

    async def aprepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any], *,
        stream: bool,
    ) -> _Prepared:  # fmt: skip
        model = self.model
        if isinstance(model, ChatRouter):
            _refuse(await model.acheck_fit(messages, **self._router_args(kwargs)))
            return _Prepared(None)
        if not isinstance(model, MultiLLMChatModel):
            return _Prepared(None)
        req, policy, prompt = model._start(messages, stop, self._merged(kwargs), stream=stream)
        if policy != "ignore":
            report = await model._areport(
                prompt, req.params.get("max_tokens"), clamp=policy == "clamp"
            )
            req.fit = model._apply(report, policy, req.params)
        else:
            req.fit = UNCHECKED
        return _Prepared(req if self.direct else None)

    def _router_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = self._merged(kwargs)
        return {"max_tokens": merged.get("max_tokens"), "tools": merged.get("tools")}

    def _fit_args(
        self, max_tokens: int | None, tools: Sequence[Any] | None
    ) -> tuple[int | None, Sequence[Any] | None]:
        mt = max_tokens if max_tokens is not None else self.kwargs.get("max_tokens")
        return mt, tools if tools is not None else self.kwargs.get("tools")

    def check_fit(
        self, x: PromptInput, max_tokens: int | None, tools: Sequence[Any] | None
    ) -> FitReport | None:
        mt, tl = self._fit_args(max_tokens, tools)
        if isinstance(self.model, ChatRouter):
            return self.model.check_fit(x, mt, tl)
        if self.surface is None:
            return None
        return self.surface.check_fit(x, mt, tl)

    async def acheck_fit(
        self, x: PromptInput, max_tokens: int | None, tools: Sequence[Any] | None
    ) -> FitReport | None:
        mt, tl = self._fit_args(max_tokens, tools)
        if isinstance(self.model, ChatRouter):
            return await self.model.acheck_fit(x, mt, tl)
        if self.surface is None:
            return None
        return await self.surface.acheck_fit(x, mt, tl)

    def known_window(self) -> int | None:
        s = self.surface
        if s is None or isinstance(self.model, ChatRouter):
            profile = getattr(self.model, "profile", None) or {}
            value = profile.get("max_input_tokens") if isinstance(profile, dict) else None
            return value if isinstance(value, int) else None
        limits = s._limits
        if limits is not None:
            return limits.context_window or limits.max_input_tokens
        return s.context_window or s.max_input_tokens

    # ---- health (free) ----
    def health(self) -> HealthReport:
        if isinstance(self.model, ChatRouter):
            return self.model.health()
        if self.surface is None:
            return _no_check(self.name)
        return self.surface.health()

    async def ahealth(self) -> HealthReport:
        if isinstance(self.model, ChatRouter):
            return await self.model.ahealth()
        if self.surface is None:
            return _no_check(self.name)
        return await self.surface.ahealth()

    # ---- calls ----
    def config(self, run_manager: Any) -> RunnableConfig | None:
        """The router's run as the parent of the wrapped candidate's run (for tracing)."""
        if run_manager is None:
            return None
        child = CallbackManager(
            handlers=run_manager.inheritable_handlers,
            inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.run_id,
            tags=run_manager.inheritable_tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.inheritable_metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
        return {"callbacks": child}


def _refuse(report: FitReport) -> None:
    """A nested router's fit check as this candidate's: over every window, refused."""
    if not report.fits:
        limit = report.max_input_tokens or report.context_window
        raise ContextWindowExceededError(
            f"the prompt does not fit: {report.reason}",
            prompt_tokens=report.prompt_tokens,
            max_tokens=report.max_tokens,
            limit=limit,
            fit=report,
            backend="router",
        )


def _no_check(name: str) -> HealthReport:
    return HealthReport(
        alive=True, ready=True, latency_s=0.0, model=name,
        detail="no free health check for this model: assumed ready",
    )  # fmt: skip


def _mark(message: BaseMessage, name: str) -> None:
    message.response_metadata[ROUTED_TO] = name


class _Table:
    """The candidates and their breakers; every change under ``lock`` (a plain object: the
    router reads it once per call, not through pydantic's private attributes)."""

    def __init__(
        self, cands: list[_Candidate], strategy: str, threshold: int, cooldown: float,
        tries: int, backoff: float,
    ) -> None:  # fmt: skip
        self.cands = cands
        self.strategy = strategy
        self.threshold = threshold
        self.cooldown = cooldown
        self.tries = tries
        self.backoff = backoff
        self.lock = threading.Lock()
        self.turn = 0
        self.names = [c.name for c in cands]
        self.label = f"router({', '.join(self.names)})"

    def open(self, c: _Candidate, now: float) -> None:
        if c.breaker == "closed":
            c.times_opened += 1
        c.breaker = "open"
        c.open_until = now + self.cooldown

    def begin(self, c: _Candidate) -> None:
        with self.lock:
            c.in_flight += 1

    def cancel(self, c: _Candidate) -> None:
        """The call never went out (the fit check passed it over, or the input is bad)."""
        with self.lock:
            c.in_flight -= 1

    def sent(self, c: _Candidate) -> None:
        with self.lock:
            c.calls += 1

    def done(self, c: _Candidate, exc: BaseException | None) -> None:
        """A call ended: success, a failure that counts toward the breaker, or one that does
        not (the server answered: a 400, a refusal; or the caller stopped reading)."""
        with self.lock:
            c.in_flight -= 1
            if exc is None:
                c.consecutive = 0
                return
            c.last_error = type(exc).__name__
            if not _server_failure(exc):
                return
            c.failures += 1
            c.consecutive += 1
            if c.consecutive >= self.threshold and c.breaker == "closed":
                self.open(c, time.monotonic())

    def judge(self, c: _Candidate, report: HealthReport, *, probe: bool) -> None:
        """A health report opens a breaker (not alive) or, after the cooldown, closes it."""
        now = time.monotonic()
        with self.lock:
            c.last_health = str(report)
            if not report.alive:
                self.open(c, now)
            elif c.breaker != "closed" and (probe or now >= c.open_until):
                c.breaker = "closed"
                c.consecutive = 0

    def due(self) -> list[_Candidate]:
        """Open candidates whose cooldown ended: marked probing, one caller probes each."""
        now = time.monotonic()
        due = []
        with self.lock:
            for c in self.cands:
                if c.breaker == "open" and now >= c.open_until:
                    c.breaker = "probing"
                    due.append(c)
        return due

    def order(self, *, advance: bool = True) -> list[_Candidate]:
        """The closed candidates, in the order the strategy gives them for this call."""
        with self.lock:
            live = [c for c in self.cands if c.breaker == "closed"]
            if not live:
                return []
            n = len(self.cands)
            start = self.turn % n
            if advance:
                self.turn += 1
            strategy = self.strategy
            if strategy == "ordered":
                return live
            if strategy == "round_robin":
                return sorted(live, key=lambda c: ((c.index - start) % n, c.in_flight))
            if strategy == "least_busy":
                return sorted(live, key=lambda c: (c.in_flight, (c.index - start) % n))
            # weighted: smooth weighted round robin (nginx); ties by fewest in flight
            total = sum(c.weight for c in live)
            for c in live:
                c.current += c.weight
            best = max(live, key=lambda c: (c.current, -c.in_flight, -c.index))
            if advance:
                best.current -= total
            else:
                for c in live:
                    c.current -= c.weight
            rest = sorted(
                (c for c in live if c is not best), key=lambda c: (-c.weight, c.in_flight, c.index)
            )
            return [best, *rest]


class ChatRouter(ToolsAndStructuredOutput):
    """A chat model that routes each call to one of ``models``, decided before sending.

    Example::

        router = ChatRouter(
            models=[ChatVLLMServer(base_url=a, model="m"), ChatVLLMServer(base_url=b, model="m"),
                    ChatAzureOpenAI(...)],
            strategy="least_busy", failure_threshold=3, cooldown_s=30,
        )
        router.invoke("Hello")
        router.state()   # each candidate's breaker, failures, calls in flight, last health
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    models: list[Any]
    """The candidates: chat models, or chat models wrapped by bind, with_config, with_retry or
    with_fallbacks."""

    strategy: Strategy = "least_busy"
    """How the candidates that fit and are closed are ordered: ``least_busy`` (fewest calls in
    flight, equal ones in turn), ``round_robin``, ``weighted`` (smooth weighted round robin by
    ``weights``) or ``ordered`` (a fallback chain: the first that fits and is closed)."""

    weights: list[float] | None = None
    """One positive weight per model, for ``strategy="weighted"`` (default: all 1)."""

    names: list[str] | None = None
    """One unique name per model, shown by :meth:`state` (default: ``"<i>:<model name>"``)."""

    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive retryable failures (or cut streams) that open a candidate's breaker."""

    cooldown_s: float = Field(default=30.0, gt=0)
    """Seconds an open breaker passes its candidate over before a health check may close it."""

    max_retries: int | None = Field(default=None, ge=0)
    """Tries after the first, each on the next candidate in the order (the order starts over
    once every candidate was tried); None: one try per candidate."""

    backoff_s: float = Field(default=INITIAL_DELAY_S, ge=0)
    """The retry policy's first delay before the next candidate (doubling, with jitter; a
    server's Retry-After wins)."""

    _backend: ClassVar[str] = "router"
    _t: _Table = PrivateAttr()

    @model_validator(mode="after")
    def _build(self) -> Self:
        if not self.models:
            raise InvalidInputError("models", "at least one chat model is required; got none")
        n = len(self.models)
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(
                "strategy", f"must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}"
            )
        weights = self.weights or [1.0] * n
        if len(weights) != n or any(
            not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0 for w in weights
        ):
            raise InvalidInputError(
                "weights", f"must be {n} positive numbers, one per model; got {self.weights!r}"
            )
        if self.names is not None and (
            len(self.names) != n or len(set(self.names)) != n or not all(self.names)
        ):
            raise InvalidInputError(
                "names", f"must be {n} unique non-empty names, one per model; got {self.names!r}"
            )
        cands = []
        for i, runnable in enumerate(self.models):
            model, _ = _leaf(runnable, {}, f"models[{i}]")
            label = getattr(model, "model_name", None) or getattr(model, "model", None)
            name = self.names[i] if self.names else f"{i}:{label or type(model).__name__}"
            cands.append(_Candidate(i, runnable, name, float(weights[i])))
        tries = (self.max_retries if self.max_retries is not None else n - 1) + 1
        self._t = _Table(
            cands, self.strategy, self.failure_threshold, self.cooldown_s, tries, self.backoff_s
        )
        windows = [w for c in cands if (w := c.known_window()) is not None]
        if windows:
            self._set_profile(max(windows))
        return self

    def _set_profile(self, max_input: int | None) -> None:
        """LangChain's ``profile``: the largest prompt a candidate takes."""
        if max_input is not None:
            profile = dict(self.profile or {})
            profile["max_input_tokens"] = max_input
            object.__setattr__(self, "profile", profile)

    @property
    def _llm_type(self) -> str:
        return "multillm-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "models": self._t.names}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # LangChain's own looks for model-name fields with hasattr (each miss an exception
        # through pydantic, ~10 µs a call here): the router says what it is directly.
        ls = LangSmithParams(
            ls_provider="multillm-router", ls_model_name=self._t.label, ls_model_type="chat"
        )
        if kwargs.get("temperature") is not None:
            ls["ls_temperature"] = kwargs["temperature"]
        if kwargs.get("max_tokens") is not None:
            ls["ls_max_tokens"] = kwargs["max_tokens"]
        if stop:
            ls["ls_stop"] = stop
        return ls

    # ------------------------------------------------------------------ state

    def state(self, nested: bool = False) -> list[CandidateState]:
        """Each candidate's breaker, failures, calls in flight, last error and last health.

        ``nested``: a candidate that is itself a router is followed by its own candidates,
        named ``outer/inner``."""
        mine = self._state()
        if not nested:
            return mine
        out: list[CandidateState] = []
        for c, st in zip(self._t.cands, mine, strict=True):
            out.append(st)
            if isinstance(c.model, ChatRouter):
                out.extend(
                    dataclasses.replace(s, name=f"{c.name}/{s.name}")
                    for s in c.model.state(nested=True)
                )
        return out

    def _state(self) -> list[CandidateState]:
        now = time.monotonic()
        with self._t.lock:
            return [
                CandidateState(
                    name=c.name,
                    breaker=c.breaker,
                    consecutive_failures=c.consecutive,
                    in_flight=c.in_flight,
                    calls=c.calls,
                    failures=c.failures,
                    times_opened=c.times_opened,
                    last_error=c.last_error,
                    last_health=c.last_health,
                    reopens_in_s=max(c.open_until - now, 0.0) if c.breaker != "closed" else None,
                    context_window=c.known_window(),
                )
                for c in self._t.cands
            ]

    def _nothing_left(
        self,
        last: BaseException | None,
        misfit: dict[int, ContextWindowExceededError],
        closed_out: list[_Candidate],
    ) -> BaseException:
        if last is not None:
            return last
        if misfit and not closed_out:
            return _no_fit(self._t.cands, misfit)
        now = time.monotonic()
        with self._t.lock:
            waits = [max(c.open_until - now, 0.0) for c in closed_out]
            states = ", ".join(f"{c.name}: {c.breaker}" for c in closed_out)
        fit = f"; too small for the prompt: {', '.join(self._names(misfit))}" if misfit else ""
        return BackendUnavailableError(
            f"no candidate can take the call: breakers {states}{fit}",
            retry_after=min(waits) if waits else None,
            backend="router",
        )

    def _names(self, misfit: dict[int, ContextWindowExceededError]) -> list[str]:
        return [self._t.cands[i].name for i in misfit]

    # ------------------------------------------------------------------ routing, sync

    def _route(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        attempt: Callable[[_Candidate, _Prepared], Any],
        *,
        stream: bool,
        force: bool = False,
    ) -> tuple[_Candidate, Any]:
        """Walk the order; ``attempt`` runs on each candidate that fits until one succeeds.
        The winner stays in flight (the caller ends it with :meth:`_done`).

        ``context_overflow="ignore"`` still routes by fit; only when no candidate fits is the
        call sent anyway (``force``), to the first in the order: its backend judges."""
        t = self._t
        ignore = not force and kwargs.get("context_overflow") == "ignore"
        if ignore:
            kwargs = {**kwargs, "context_overflow": "raise"}
        for c in t.due():
            t.judge(c, c.health(), probe=True)
        order = t.order()
        closed_out = [c for c in t.cands if c not in order]
        misfit: dict[int, ContextWindowExceededError] = {}
        tries, limit = 0, t.tries
        last: BaseException | None = None
        while tries < limit:
            progressed = False
            for c in order:
                if c.index in misfit or c.breaker != "closed":
                    continue
                t.begin(c)
                try:
                    prepared = c.prepare(messages, stop, kwargs, stream=stream)
                except ContextWindowExceededError as exc:
                    t.cancel(c)
                    misfit[c.index] = exc
                    continue
                except Exception as exc:
                    if not _retryable(exc):
                        t.cancel(c)
                        raise
                    t.done(c, exc)
                    last, tries, progressed = exc, tries + 1, True
                    if tries >= limit:
                        break
                    time.sleep(delay(exc, tries, initial=t.backoff))
                    continue
                t.sent(c)
                try:
                    return c, attempt(c, prepared)
                except Exception as exc:
                    t.done(c, exc)
                    if not _retryable(exc):
                        raise
                    last, tries, progressed = exc, tries + 1, True
                    if tries >= limit:
                        break
                    time.sleep(delay(exc, tries, initial=t.backoff))
            if not progressed:
                break
        if ignore and last is None and misfit:
            forced = {**kwargs, "context_overflow": "ignore"}
            return self._route(messages, stop, forced, attempt, stream=stream, force=True)
        if last is None and closed_out and len(misfit) == len(order):
            self._fit_closed_out(messages, stop, kwargs, misfit, closed_out, stream)
        raise self._nothing_left(last, misfit, closed_out)

    def _fit_closed_out(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        misfit: dict[int, ContextWindowExceededError],
        closed_out: list[_Candidate],
        stream: bool,
    ) -> None:
        """Nothing closed fits: whether an open one would (else the error is the fit's)."""
        for c in list(closed_out):
            try:
                c.prepare(messages, stop, kwargs, stream=stream)
            except ContextWindowExceededError as exc:
                misfit[c.index] = exc
                closed_out.remove(c)
            except Exception:
                pass

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        def attempt(c: _Candidate, p: _Prepared) -> ChatResult:
            if p.req is not None:
                model = c.model
                assert isinstance(model, MultiLLMChatModel)
                if model.streaming:
                    p.req.stream = True
                    return _join(list(model._chat_stream(p.req)))
                return model._chat(p.req)
            msg = c.runnable.invoke(messages, c.config(run_manager), stop=stop, **kwargs)
            return ChatResult(generations=[ChatGeneration(message=_as_ai(msg))])

        c, result = self._route(messages, stop, kwargs, attempt, stream=False)
        self._t.done(c, None)
        for gen in result.generations:
            _mark(gen.message, c.name)
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        def attempt(
            c: _Candidate, p: _Prepared
        ) -> tuple[ChatGenerationChunk, Iterator[ChatGenerationChunk]]:
            if p.req is not None:
                model = c.model
                assert isinstance(model, MultiLLMChatModel)
                it: Iterator[ChatGenerationChunk] = iter(model._chat_stream(p.req))
            else:
                it = (
                    _as_chunk(m)
                    for m in c.runnable.stream(messages, c.config(run_manager), stop=stop, **kwargs)
                )
            first = next(it, None)
            if first is None:
                raise IncompleteResponseError("the stream ended before any output")
            return first, it

        c, (first, it) = self._route(messages, stop, kwargs, attempt, stream=True)
        _mark(first.message, c.name)
        error: BaseException | None = None
        try:
            item = first
            while True:
                if run_manager:
                    run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
                try:
                    item = next(it)
                except StopIteration:
                    break
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._t.done(c, error)
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    # ------------------------------------------------------------------ routing, async

    async def _aroute(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        attempt: Callable[[_Candidate, _Prepared], Any],
        *,
        stream: bool,
        force: bool = False,
    ) -> tuple[_Candidate, Any]:
        """Async twin of :meth:`_route` (``attempt`` returns an awaitable)."""
        t = self._t
        ignore = not force and kwargs.get("context_overflow") == "ignore"
        if ignore:
            kwargs = {**kwargs, "context_overflow": "raise"}
        due = t.due()
        if due:
            reports = await asyncio.gather(*(c.ahealth() for c in due))
            for c, report in zip(due, reports, strict=True):
                t.judge(c, report, probe=True)
        order = t.order()
        closed_out = [c for c in t.cands if c not in order]
        misfit: dict[int, ContextWindowExceededError] = {}
        tries, limit = 0, t.tries
        last: BaseException | None = None
        while tries < limit:
            progressed = False
            for c in order:
                if c.index in misfit or c.breaker != "closed":
                    continue
                t.begin(c)
                try:
                    prepared = await c.aprepare(messages, stop, kwargs, stream=stream)
                except ContextWindowExceededError as exc:
                    t.cancel(c)
                    misfit[c.index] = exc
                    continue
                except asyncio.CancelledError:
                    t.cancel(c)
                    raise
                except Exception as exc:
                    if not _retryable(exc):
                        t.cancel(c)
                        raise
                    t.done(c, exc)
                    last, tries, progressed = exc, tries + 1, True
                    if tries >= limit:
                        break
                    await asyncio.sleep(delay(exc, tries, initial=t.backoff))
                    continue
                t.sent(c)
                try:
                    return c, await attempt(c, prepared)
                except asyncio.CancelledError:
                    t.done(c, None)
                    raise
                except Exception as exc:
                    t.done(c, exc)
                    if not _retryable(exc):
                        raise
                    last, tries, progressed = exc, tries + 1, True
                    if tries >= limit:
                        break
                    await asyncio.sleep(delay(exc, tries, initial=t.backoff))
            if not progressed:
                break
        if ignore and last is None and misfit:
            forced = {**kwargs, "context_overflow": "ignore"}
            return await self._aroute(messages, stop, forced, attempt, stream=stream, force=True)
        if last is None and closed_out and len(misfit) == len(order):
            for c in list(closed_out):
                try:
                    await c.aprepare(messages, stop, kwargs, stream=stream)
                except ContextWindowExceededError as exc:
                    misfit[c.index] = exc
                    closed_out.remove(c)
                except Exception:
                    pass
        raise self._nothing_left(last, misfit, closed_out)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async def attempt(c: _Candidate, p: _Prepared) -> ChatResult:
            if p.req is not None:
                model = c.model
                assert isinstance(model, MultiLLMChatModel)
                if model.streaming:
                    p.req.stream = True
                    return _join([x async for x in model._achat_stream(p.req)])
                return await model._achat(p.req)
            msg = await c.runnable.ainvoke(messages, c.config(run_manager), stop=stop, **kwargs)
            return ChatResult(generations=[ChatGeneration(message=_as_ai(msg))])

        c, result = await self._aroute(messages, stop, kwargs, attempt, stream=False)
        self._t.done(c, None)
        for gen in result.generations:
            _mark(gen.message, c.name)
        return result

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async def attempt(
            c: _Candidate, p: _Prepared
        ) -> tuple[ChatGenerationChunk, AsyncIterator[ChatGenerationChunk]]:
            if p.req is not None:
                model = c.model
                assert isinstance(model, MultiLLMChatModel)
                ait: AsyncIterator[ChatGenerationChunk] = model._achat_stream(p.req).__aiter__()
            else:
                ait = _achunks(c.runnable.astream(messages, c.config(run_manager), stop=stop,
                                                  **kwargs))  # fmt: skip
            try:
                first = await ait.__anext__()
            except StopAsyncIteration:
                raise IncompleteResponseError("the stream ended before any output") from None
            return first, ait

        c, (first, ait) = await self._aroute(messages, stop, kwargs, attempt, stream=True)
        _mark(first.message, c.name)
        error: BaseException | None = None
        try:
            item = first
            while True:
                if run_manager:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
                try:
                    item = await ait.__anext__()
                except StopAsyncIteration:
                    break
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._t.done(c, error)
            aclose = getattr(ait, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    # ------------------------------------------------------------------ the surface

    def _peek(self) -> list[_Candidate]:
        """The order a call would take now (closed first, then the others), nothing changed."""
        order = self._t.order(advance=False)
        return order + [c for c in self._t.cands if c not in order]

    def check_fit(
        self, x: PromptInput, max_tokens: int | None = None, tools: Sequence[Any] | None = None
    ) -> FitReport:
        """The fit report of the candidate a call would be routed to: the first in the order
        that fits; when none fits, the report of the one with the largest window."""
        reports = []
        for c in self._peek():
            report = c.check_fit(x, max_tokens, tools)
            if report is None:
                continue
            if report.fits:
                return report
            reports.append(report)
        return _widest(reports)

    async def acheck_fit(
        self, x: PromptInput, max_tokens: int | None = None, tools: Sequence[Any] | None = None
    ) -> FitReport:
        """Async twin of :meth:`check_fit`."""
        reports = []
        for c in self._peek():
            report = await c.acheck_fit(x, max_tokens, tools)
            if report is None:
                continue
            if report.fits:
                return report
            reports.append(report)
        return _widest(reports)

    def count_tokens(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int:
        """Tokens in ``x`` for the candidate a call would be routed to."""
        return self._chosen_surface(x, tools).count_tokens(x, tools)

    async def acount_tokens(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int:
        """Async twin of :meth:`count_tokens`."""
        return await (await self._achosen_surface(x, tools)).acount_tokens(x, tools)

    def _chosen_surface(self, x: PromptInput, tools: Sequence[Any] | None) -> ModelSurface:
        for c in self._peek():
            report = c.check_fit(x, None, tools)
            if report is not None and report.fits and c.surface is not None:
                return c.surface
        return self._widest_surface()

    async def _achosen_surface(self, x: PromptInput, tools: Sequence[Any] | None) -> ModelSurface:
        for c in self._peek():
            report = await c.acheck_fit(x, None, tools)
            if report is not None and report.fits and c.surface is not None:
                return c.surface
        return self._widest_surface()

    def count_tokens_exact(self, x: PromptInput, tools: Sequence[Any] | None = None) -> int | None:
        """Exact tokens in ``x`` for the candidate a call would be routed to (None where it
        cannot count exactly)."""
        return self._chosen_surface(x, tools).count_tokens_exact(x, tools)

    async def acount_tokens_exact(
        self, x: PromptInput, tools: Sequence[Any] | None = None
    ) -> int | None:
        """Async twin of :meth:`count_tokens_exact`."""
        return await (await self._achosen_surface(x, tools)).acount_tokens_exact(x, tools)

    def _widest_surface(self) -> ModelSurface:
        surfaces = [c for c in self._t.cands if c.surface is not None]
        if not surfaces:
            raise InvalidInputError(
                "models", "no candidate is a model of this package: nothing can count tokens"
            )
        best = max(surfaces, key=lambda c: c.known_window() or 0)
        assert best.surface is not None
        return best.surface

    def get_num_tokens(self, text: str) -> int:
        """Same as :meth:`count_tokens`."""
        return self.count_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Same as :meth:`count_tokens`."""
        return self.count_tokens(messages, tools=tools)

    def get_limits(self) -> Limits:
        """The largest limits a candidate offers (each asked once, as the models do)."""
        limits = _largest([c.surface.get_limits() for c in self._t.cands if c.surface is not None])
        self._set_profile(limits.max_input_tokens or limits.context_window)
        return limits

    async def aget_limits(self) -> Limits:
        """Async twin of :meth:`get_limits`."""
        found = await asyncio.gather(
            *(c.surface.aget_limits() for c in self._t.cands if c.surface is not None)
        )
        limits = _largest(list(found))
        self._set_profile(limits.max_input_tokens or limits.context_window)
        return limits

    def health(self) -> HealthReport:
        """Ready when any candidate is ready; alive when any is alive. Each candidate's free
        health check runs (none is billed); one not alive has its breaker opened, one alive
        whose cooldown has ended has it closed. Never raises."""
        started = time.perf_counter()
        reports = [c.health() for c in self._t.cands]
        return self._summary(started, reports)

    async def ahealth(self) -> HealthReport:
        """Async twin of :meth:`health` (the candidates are checked concurrently)."""
        started = time.perf_counter()
        reports = list(await asyncio.gather(*(c.ahealth() for c in self._t.cands)))
        return self._summary(started, reports)

    def _summary(self, started: float, reports: list[HealthReport]) -> HealthReport:
        for c, report in zip(self._t.cands, reports, strict=True):
            self._t.judge(c, report, probe=False)
        windows = [r.context_window for r in reports if r.alive and r.context_window]
        detail = "; ".join(f"{c.name}: {r}" for c, r in zip(self._t.cands, reports, strict=True))
        return HealthReport(
            alive=any(r.alive for r in reports),
            ready=any(r.ready for r in reports),
            latency_s=time.perf_counter() - started,
            model="router",
            context_window=max(windows) if windows else None,
            detail=detail,
        )

    def is_alive(self) -> bool:
        """``health().alive``."""
        return self.health().alive

    async def ais_alive(self) -> bool:
        """Async twin of :meth:`is_alive`."""
        return (await self.ahealth()).alive


# ------------------------------------------------------------------ helpers


def _no_fit(cands: list[_Candidate], misfit: dict[int, ContextWindowExceededError]) -> Exception:
    parts = []
    for i, exc in sorted(misfit.items()):
        fit = exc.fit
        tokens = f"{fit.prompt_tokens} ({fit.counted.replace('_', ' ')})" if fit else "?"
        parts.append(f"{cands[i].name}: limit {exc.limit}, prompt {tokens}")
    widest = max(misfit.values(), key=lambda e: e.limit or 0)
    return ContextWindowExceededError(
        "the prompt fits no candidate: " + "; ".join(parts),
        prompt_tokens=widest.prompt_tokens,
        max_tokens=widest.max_tokens,
        limit=widest.limit,
        fit=widest.fit,
        backend="router",
    )


def _widest(reports: list[FitReport]) -> FitReport:
    if not reports:
        return decide(0, exact=False, max_tokens=None, limits=Limits())
    return max(reports, key=lambda r: (r.context_window or 0, r.max_input_tokens or 0))


def _largest(found: list[Limits]) -> Limits:
    def top(name: str) -> int | None:
        values = [v for lim in found if (v := getattr(lim, name)) is not None]
        return max(values) if values else None

    return Limits(
        context_window=top("context_window"),
        max_input_tokens=top("max_input_tokens"),
        max_output_tokens=top("max_output_tokens"),
    )


def _as_ai(msg: Any) -> AIMessage:
    if isinstance(msg, AIMessage):
        return msg
    return AIMessage(content=getattr(msg, "content", str(msg)))


def _as_chunk(msg: Any) -> ChatGenerationChunk:
    if not isinstance(msg, AIMessageChunk):
        msg = AIMessageChunk(content=getattr(msg, "content", str(msg)))
    return ChatGenerationChunk(message=msg)


async def _achunks(source: AsyncIterator[Any]) -> AsyncIterator[ChatGenerationChunk]:
    async for msg in source:
        yield _as_chunk(msg)


def _join(chunks: list[ChatGenerationChunk]) -> ChatResult:
    if not chunks:
        raise IncompleteResponseError("the stream ended before any output")
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return ChatResult(generations=[ChatGeneration(message=_as_ai_from_chunk(total))])


def _as_ai_from_chunk(chunk: ChatGenerationChunk) -> AIMessage:
    from langchain_core.messages import message_chunk_to_message

    msg = message_chunk_to_message(chunk.message)
    return msg if isinstance(msg, AIMessage) else _as_ai(msg)


# As in _base: LangChain asks each call whether these take run_manager (inspect.signature).
for _fn in (ChatRouter._generate, ChatRouter._agenerate):
    setattr(_fn, "__signature__", inspect.signature(_fn))  # noqa: B010
