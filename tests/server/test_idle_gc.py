"""The idle collector (``server/idle_gc.py``): a full collection once the worker is idle after a
burst, put off by any request, never after a trickle; wired into the gateway by its settings.

What it buys in memory is measured by ``make bench-serve`` (docs/server.md, "Memory").
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_multillm.server.config import ServeConfig
from langchain_multillm.server.idle_gc import IdleCollector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class _App:
    """An ASGI app whose requests wait for ``release``; each leaves a reference cycle behind,
    whose finalizer records that a collection freed it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.freed = 0

    def _freed(self) -> None:
        self.freed += 1

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        garbage = _Cycle()
        weakref.finalize(garbage, self._freed)
        del garbage
        await self.release.wait()


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only the idle collector collects during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _burst(mw: IdleCollector, app: _App, n: int) -> None:
    calls = [asyncio.ensure_future(mw({"type": "http"}, None, None)) for _ in range(n)]
    await asyncio.sleep(0.01)
    assert mw.in_flight == n
    app.release.set()
    await asyncio.gather(*calls)


async def test_a_burst_is_collected_once_the_worker_is_idle(no_automatic_gc: None) -> None:
    app, took = _App(), []
    mw = IdleCollector(app, after_s=0.1, min_peak=4, on_collect=took.append)
    await _burst(mw, app, 5)
    assert app.freed == 0 and mw.collections == 0  # not while the burst ends
    await asyncio.sleep(0.3)
    assert mw.collections == 1 and len(took) == 1 and took[0] >= 0
    assert app.freed == 5  # the burst's garbage cycles are gone
    assert mw.peak == 0


async def test_a_request_in_the_idle_period_puts_the_collection_off(
    no_automatic_gc: None,
) -> None:
    app = _App()
    mw = IdleCollector(app, after_s=0.2, min_peak=4)
    await _burst(mw, app, 4)
    await asyncio.sleep(0.1)
    await mw({"type": "http"}, None, None)  # one more request, before the idle period ends
    await asyncio.sleep(0.15)
    assert mw.collections == 0  # 0.25 s after the burst, but only 0.15 s idle
    await asyncio.sleep(0.15)
    assert mw.collections == 1


async def test_a_trickle_is_never_collected(no_automatic_gc: None) -> None:
    app = _App()
    app.release.set()
    mw = IdleCollector(app, after_s=0.05, min_peak=4)
    for _ in range(20):
        await mw({"type": "http"}, None, None)
    await asyncio.sleep(0.15)
    assert mw.collections == 0 and app.freed == 0


async def test_other_scopes_pass_through_uncounted() -> None:
    app = _App()
    app.release.set()
    mw = IdleCollector(app, after_s=0.05, min_peak=1)
    await mw({"type": "lifespan"}, None, None)
    assert mw.peak == 0


def _collector_of(app: Any) -> list[dict[str, Any]]:
    return [m.kwargs for m in app.user_middleware if m.cls is IdleCollector]


@pytest.mark.parametrize(("after_s", "wired"), [(2.5, True), (0, False)])
def test_the_gateway_wires_it_from_its_settings(
    server_deps: None, after_s: float, wired: bool
) -> None:
    from langchain_multillm.server.app import create_app

    config = ServeConfig.model_validate(
        {
            "server": {"idle_gc_after_s": after_s, "idle_gc_min_peak": 7},
            "models": [
                {
                    "name": "m",
                    "model": "vllm-server:m",
                    "params": {"base_url": "http://127.0.0.1:9/v1"},
                }
            ],
        }
    )
    found = _collector_of(create_app(config))
    if wired:
        assert len(found) == 1
        assert found[0]["after_s"] == 2.5 and found[0]["min_peak"] == 7
    else:
        assert found == []
