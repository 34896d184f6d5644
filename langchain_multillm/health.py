"""Liveness and readiness, free of charge: :class:`HealthReport` and the probe helpers.

Every backend reads the same states the same way (``is_alive()`` means the model can answer):

* nothing answers (connection refused, reset, timed out, any transport error): down;
* the server answers that it cannot serve (a 5xx from its health route or its probe:
  unhealthy, overloaded, engine dead): down, its answer in ``detail``;
* the server answers and is healthy, but the configured model is not served (or the
  credentials are refused, or it is rate limited): ``alive``, not ``ready``;
* healthy and the model served: ``ready``.

A check that makes I/O calls is written once, as steps (:data:`HealthSteps`): a generator that
yields each :class:`Call` and gets its result back, run by :func:`run_steps` on the sync client
and by :func:`arun_steps` on the async one. The HTTP layer's probes and the SDK backends'
checks (Azure, Gemini) are written so: no backend writes a sync and an async twin.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from langchain_multillm.errors import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitError,
    error_message_from_body,
)

__all__ = ["Call", "HealthReport", "HealthSteps", "arun_steps", "run_steps"]

T = TypeVar("T")


@dataclass(frozen=True)
class HealthReport:
    """The state of a backend.

    ``alive``: the endpoint (or engine) answers. ``ready``: the configured model is served and
    can take requests. ``detail`` says what was checked, or what failed.
    """

    alive: bool
    ready: bool
    latency_s: float
    model: str | None = None
    context_window: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        state = "ready" if self.ready else ("alive, not ready" if self.alive else "down")
        window = f", window {self.context_window}" if self.context_window else ""
        ms = self.latency_s * 1000
        return f"{state} ({self.model or '?'}{window}) in {ms:.0f} ms: {self.detail}"


def down(started: float, model: str | None, detail: str) -> HealthReport:
    """A report for a backend that did not answer."""
    return HealthReport(
        alive=False,
        ready=False,
        latency_s=time.perf_counter() - started,
        model=model,
        detail=detail,
    )


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed probe."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def not_ready(
    started: float, model: str | None, detail: str, context_window: int | None = None
) -> HealthReport:
    """A report for a backend that answers but cannot serve the configured model now."""
    return HealthReport(
        alive=True,
        ready=False,
        latency_s=time.perf_counter() - started,
        model=model,
        context_window=context_window,
        detail=detail,
    )


def unhealthy(status: int) -> bool:
    """Whether a health route's status says the server cannot serve now (5xx: TGI's 503
    "unhealthy", vLLM's 503 for a dead engine, a proxy's 502/504)."""
    return status >= 500


def answered(route: str, response: httpx.Response) -> str:
    """``/health answered 503: unhealthy``: the status and the server's own words, if any."""
    try:
        words = error_message_from_body(response.text, "") if response.content else ""
    except httpx.ResponseNotRead:
        words = ""
    return f"{route} answered {response.status_code}" + (f": {words[:200]}" if words else "")


def still_alive(exc: BaseException) -> bool:
    """Whether a failed probe still shows a server that answers and could serve: it refused the
    credentials, does not serve the model, refused the request or is rate limited (4xx).
    Transport errors, timeouts, 5xx and unreadable answers mean it cannot answer now."""
    return isinstance(
        exc,
        (
            AuthenticationError,
            PermissionDeniedError,
            ModelNotFoundError,
            BadRequestError,
            RateLimitError,
        ),
    )


def probe_failed(started: float, model: str | None, what: str, exc: BaseException) -> HealthReport:
    """The report for a probe that raised: alive, not ready, if :func:`still_alive`; else down."""
    detail = f"{what}: {describe(exc)}"
    return not_ready(started, model, detail) if still_alive(exc) else down(started, model, detail)


# ---- checks written once, run on either client ----
@dataclass(frozen=True)
class Call(Generic[T]):
    """One I/O call of a health check, for both clients: ``sync()`` is run by
    :func:`run_steps`, ``async_()`` (awaited) by :func:`arun_steps`."""

    sync: Callable[[], T]
    async_: Callable[[], Awaitable[T]]


HealthSteps = Generator[Call[Any], Any, HealthReport]
"""A health check as steps: it yields each :class:`Call`, gets its result back at the
``yield`` (or its exception, raised there), and returns the report."""


def run_steps(steps: HealthSteps) -> HealthReport:
    """Run a check's calls on the sync client."""
    try:
        call = next(steps)
        while True:
            try:
                result = call.sync()
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        report: HealthReport = done.value
        return report


async def arun_steps(steps: HealthSteps) -> HealthReport:
    """Run a check's calls on the async client (awaited: no thread is taken)."""
    try:
        call = next(steps)
        while True:
            try:
                result = await call.async_()
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        report: HealthReport = done.value
        return report
