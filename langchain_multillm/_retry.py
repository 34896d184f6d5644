"""Retries in one place: retryable errors only, exponential backoff with jitter, Retry-After.

The SDKs' own retries are turned off; every backend calls through :func:`call` / :func:`acall`
(a request) and :func:`first_of` / :func:`afirst_of` (a stream, retried only until its first
chunk arrives). :func:`retrying` / :func:`aretrying` give the same policy as tenacity
controllers, for loops of one's own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from langchain_multillm.errors import MultiLLMError

__all__ = [
    "acall",
    "afirst_of",
    "aretrying",
    "call",
    "delay",
    "first_of",
    "is_retryable",
    "retrying",
]

T = TypeVar("T")

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 20.0


def is_retryable(exc: BaseException) -> bool:
    """Whether an error may succeed when the same request is sent again."""
    return isinstance(exc, MultiLLMError) and bool(exc.is_retryable)


def delay(
    exc: BaseException | None,
    attempt: int,
    *,
    initial: float = INITIAL_DELAY_S,
    cap: float = MAX_DELAY_S,
) -> float:
    """Seconds before the try after failed try number ``attempt`` (1-based): the server's
    Retry-After if given, else full jitter."""
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after >= 0:
        return min(float(retry_after), cap)
    ceiling = min(cap, initial * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


def backoff(
    state: RetryCallState, *, initial: float = INITIAL_DELAY_S, cap: float = MAX_DELAY_S
) -> float:
    """:func:`delay` for a tenacity retry state."""
    exc = state.outcome.exception() if state.outcome else None
    return delay(exc, state.attempt_number, initial=initial, cap=cap)


def _kwargs(max_retries: int, max_delay: float) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max(0, max_retries) + 1),
        "wait": lambda s: backoff(s, cap=max_delay),
        "retry": retry_if_exception(is_retryable),
        "reraise": True,
    }


# call / acall are the policy of retrying() written out: they run on every request, and a
# tenacity controller costs more per call than a request to a local server takes.


def call(max_retries: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` under the retry policy: up to ``max_retries`` more tries of a retryable
    error, after :func:`delay`; the last error is raised."""
    attempt = 1
    while True:
        try:
            return fn(*args)
        except Exception as exc:
            if attempt > max_retries or not is_retryable(exc):
                raise
            time.sleep(delay(exc, attempt))
            attempt += 1


async def acall(max_retries: int, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Async twin of :func:`call`."""
    attempt = 1
    while True:
        try:
            return await fn(*args)
        except Exception as exc:
            if attempt > max_retries or not is_retryable(exc):
                raise
            await asyncio.sleep(delay(exc, attempt))
            attempt += 1


def first_of(max_retries: int, factory: Callable[[], Iterator[T]]) -> tuple[T | None, Iterator[T]]:
    """The first item of ``factory()`` (None if it has none) and the iterator, under the retry
    policy: a retryable error before the first item makes a new iterator."""
    attempt = 1
    while True:
        try:
            it = factory()
            return next(it, None), it
        except Exception as exc:
            if attempt > max_retries or not is_retryable(exc):
                raise
            time.sleep(delay(exc, attempt))
            attempt += 1


async def afirst_of(
    max_retries: int, factory: Callable[[], AsyncIterable[T]]
) -> tuple[T | None, AsyncIterator[T]]:
    """Async twin of :func:`first_of`."""
    attempt = 1
    while True:
        try:
            ait = factory().__aiter__()
            return await ait.__anext__(), ait
        except StopAsyncIteration:
            return None, ait
        except Exception as exc:
            if attempt > max_retries or not is_retryable(exc):
                raise
            await asyncio.sleep(delay(exc, attempt))
            attempt += 1


def retrying(max_retries: int, max_delay: float = MAX_DELAY_S) -> Retrying:
    """A tenacity policy for sync calls: ``for attempt in retrying(n): with attempt: ...``."""
    return Retrying(**_kwargs(max_retries, max_delay))


def aretrying(max_retries: int, max_delay: float = MAX_DELAY_S) -> AsyncRetrying:
    """The async twin of :func:`retrying`."""
    return AsyncRetrying(**_kwargs(max_retries, max_delay))
