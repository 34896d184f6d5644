"""Per-model concurrency: slots, the bounded queue, 429 with Retry-After, cancelled waiters."""

from __future__ import annotations

import asyncio

import pytest

from langchain_multillm.server.http_errors import QueueFullError
from langchain_multillm.server.limits import ModelLimiter


async def test_slots_queue_and_refusal() -> None:
    seen: list[tuple[int, int]] = []
    lim = ModelLimiter("m", 2, 1, on_change=lambda a, b: seen.append((a, b)))
    t1 = await lim.acquire()
    await lim.acquire()
    assert (lim.in_flight, lim.waiting) == (2, 0)
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    assert (lim.in_flight, lim.waiting) == (2, 1)
    with pytest.raises(QueueFullError) as err:
        await lim.acquire()
    assert err.value.retry_after is not None and err.value.retry_after >= 1
    assert "max_concurrency=2" in str(err.value) and "max_queue=1" in str(err.value)
    lim.release(t1)
    await waiter
    assert (lim.in_flight, lim.waiting) == (2, 0)
    assert seen[-1] == (2, 0)
    lim.release()
    lim.release()
    assert (lim.in_flight, lim.waiting) == (0, 0)


async def test_no_queue_refuses_at_once() -> None:
    lim = ModelLimiter("m", 1, 0)
    await lim.acquire()
    with pytest.raises(QueueFullError):
        await lim.acquire()
    lim.release()
    await lim.acquire()  # free again
    lim.release()


async def test_a_cancelled_waiter_leaves_the_line_without_a_slot() -> None:
    lim = ModelLimiter("m", 1, 2)
    await lim.acquire()
    gone = asyncio.ensure_future(lim.acquire())
    stays = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    assert lim.waiting == 2
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert lim.waiting == 1
    lim.release()
    await stays
    assert (lim.in_flight, lim.waiting) == (1, 0)
    lim.release()
    assert lim.in_flight == 0


async def test_retry_after_follows_the_mean_duration() -> None:
    lim = ModelLimiter("m", 1, 10)
    lim.mean_s = 4.0
    await lim.acquire()
    assert lim.retry_after_s() == 4
    lim.release()


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        ModelLimiter("m", 0, 1)
    with pytest.raises(ValueError, match="max_queue"):
        ModelLimiter("m", 1, -1)
