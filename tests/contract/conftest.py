"""Fixtures of the contract suite: the table's rows as a parameter, one fault proxy per HTTP
peer for the session, and a :class:`Bench` per test (builds the row's models, instruments them,
undoes everything afterwards)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.bench import Bench
from tests.contract.proxy import FaultProxy
from tests.contract.rows import (
    IN_PROCESS_INSTRUMENTS,
    ROWS,
    Instrument,
    ProxyInstrument,
    Row,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``row`` runs once per row, with the row's tier marker (so
    ``pytest tests/contract -m tgi`` runs the TGI row only), and as a strict xfail where the
    row names a known bug it finds (``Row.known_bugs``); grouped by row."""
    if "row" in metafunc.fixturenames:
        name = metafunc.function.__name__
        params = [
            pytest.param(row, id=row.id, marks=[getattr(pytest.mark, row.marker), *_bug(row, name)])
            for row in ROWS
        ]
        metafunc.parametrize("row", params, scope="module")


def _bug(row: Row, test: str) -> list[pytest.MarkDecorator]:
    """A known package bug the row's data names for this test: strict xfail, with why."""
    reason = row.known_bugs.get(test)
    return [pytest.mark.xfail(strict=True, reason=f"bug: {reason}")] if reason else []


@pytest.fixture(scope="session")
def proxies() -> Iterator[dict[str, FaultProxy]]:
    """One fault proxy per HTTP peer, for the session (started on first use)."""
    started: dict[str, FaultProxy] = {}
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.fixture
def bench(
    row: Row, request: pytest.FixtureRequest, proxies: dict[str, FaultProxy]
) -> Iterator[Bench]:
    peer = request.getfixturevalue(row.peer_fixture)
    proxy: FaultProxy | None = None
    if row.http:
        upstream = row.upstream(peer)
        proxy = proxies.get(upstream)
        if proxy is None:
            proxy = proxies[upstream] = FaultProxy(upstream).start()
        proxy.reset()
        instrument: Instrument = ProxyInstrument(row, proxy)
    else:
        instrument = IN_PROCESS_INSTRUMENTS[row.id]()
    bench = Bench(row=row, peer=peer, instrument=instrument, proxy=proxy)
    try:
        yield bench
    finally:
        bench.close()
