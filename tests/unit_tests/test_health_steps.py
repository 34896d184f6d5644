"""A health check written once as steps (``health.HealthSteps``) and run on either client:
:func:`~langchain_multillm.health.run_steps` calls only the sync side of each call,
:func:`~langchain_multillm.health.arun_steps` awaits only the async side, on the event loop's
thread; a call's result comes back at its ``yield``, its exception is raised there."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from langchain_multillm.health import Call, HealthReport, HealthSteps, arun_steps, run_steps


class Side:
    """Records which side of each call ran, and on which thread."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.ran: list[tuple[str, str, int]] = []
        self.fail = fail or set()

    def call(self, name: str, value: Any) -> Call[Any]:
        def sync() -> Any:
            self.ran.append(("sync", name, threading.get_ident()))
            if name in self.fail:
                raise ConnectionError(f"{name} refused")
            return value

        async def async_() -> Any:
            await asyncio.sleep(0)
            self.ran.append(("async", name, threading.get_ident()))
            if name in self.fail:
                raise ConnectionError(f"{name} refused")
            return value

        return Call(sync, async_)


def check(side: Side) -> HealthSteps:
    """Two calls; the second's failure is caught at its yield and reported."""
    status = yield side.call("status", 200)
    try:
        models = yield side.call("models", ["m1", "m2"])
    except ConnectionError as exc:
        return HealthReport(alive=True, ready=False, latency_s=0.0, detail=f"models: {exc}")
    return HealthReport(alive=True, ready="m2" in models, latency_s=0.0, detail=f"{status}")


def run_both(fail: set[str] | None = None) -> tuple[HealthReport, Side, HealthReport, Side]:
    sync_side, async_side = Side(fail), Side(fail)
    sync_report = run_steps(check(sync_side))
    async_report = asyncio.run(arun_steps(check(async_side)))
    return sync_report, sync_side, async_report, async_side


def test_each_runner_runs_its_own_side_and_both_agree() -> None:
    sync_report, sync_side, async_report, async_side = run_both()
    assert sync_report == async_report == HealthReport(True, True, 0.0, detail="200")
    assert [(kind, name) for kind, name, _ in sync_side.ran] == [
        ("sync", "status"),
        ("sync", "models"),
    ]
    assert [(kind, name) for kind, name, _ in async_side.ran] == [
        ("async", "status"),
        ("async", "models"),
    ]


def test_async_runner_takes_no_thread() -> None:
    side = Side()

    async def main() -> int:
        await arun_steps(check(side))
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {thread for _, _, thread in side.ran} == {loop_thread}


def test_a_failed_call_is_raised_at_its_yield() -> None:
    sync_report, _, async_report, _ = run_both(fail={"models"})
    assert sync_report == async_report
    assert not sync_report.ready and sync_report.detail == "models: models refused"


def test_an_error_the_check_does_not_catch_leaves_both_runners() -> None:
    with pytest.raises(ConnectionError, match="status refused"):
        run_steps(check(Side(fail={"status"})))
    with pytest.raises(ConnectionError, match="status refused"):
        asyncio.run(arun_steps(check(Side(fail={"status"}))))


def test_a_check_without_calls_returns_its_report() -> None:
    def nothing() -> HealthSteps:
        return HealthReport(alive=False, ready=False, latency_s=0.0, detail="no calls")
        yield  # a generator: the report is its return value

    assert run_steps(nothing()).detail == "no calls"
    assert asyncio.run(arun_steps(nothing())).detail == "no calls"
