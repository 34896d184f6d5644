"""Liveness and readiness, free of charge: :class:`HealthReport` and the HTTP probe helpers."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["HealthReport"]


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
