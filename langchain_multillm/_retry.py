"""Retries in one place: retryable errors only, exponential backoff with jitter, Retry-After.

The SDKs' own retries are turned off; every backend calls through :func:`retrying` /
:func:`aretrying`. Streams retry only until their first chunk arrives (the caller stops
retrying once it has yielded anything).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from langchain_multillm.errors import MultiLLMError

__all__ = ["acall", "aretrying", "call", "is_retryable", "retrying"]

T = TypeVar("T")

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 20.0


def is_retryable(exc: BaseException) -> bool:
    """Whether an error may succeed when the same request is sent again."""
    return isinstance(exc, MultiLLMError) and bool(exc.is_retryable)


def backoff(
    state: RetryCallState, *, initial: float = INITIAL_DELAY_S, cap: float = MAX_DELAY_S
) -> float:
    """Seconds before the next try: the server's Retry-After if given, else full jitter."""
    exc = state.outcome.exception() if state.outcome else None
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after >= 0:
        return min(float(retry_after), cap)
    ceiling = min(cap, initial * (2 ** (state.attempt_number - 1)))
    return random.uniform(ceiling / 2, ceiling)


def _kwargs(max_retries: int, max_delay: float) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max(0, max_retries) + 1),
        "wait": lambda s: backoff(s, cap=max_delay),
        "retry": retry_if_exception(is_retryable),
        "reraise": True,
    }


def call(max_retries: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` under the retry policy (straight through when no retry is allowed)."""
    if max_retries <= 0:
        return fn(*args)
    return retrying(max_retries)(fn, *args)


async def acall(max_retries: int, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Async twin of :func:`call`."""
    if max_retries <= 0:
        return await fn(*args)
    return await aretrying(max_retries)(fn, *args)


def retrying(max_retries: int, max_delay: float = MAX_DELAY_S) -> Retrying:
    """A tenacity policy for sync calls: ``for attempt in retrying(n): with attempt: ...``."""
    return Retrying(**_kwargs(max_retries, max_delay))


def aretrying(max_retries: int, max_delay: float = MAX_DELAY_S) -> AsyncRetrying:
    """The async twin of :func:`retrying`."""
    return AsyncRetrying(**_kwargs(max_retries, max_delay))
