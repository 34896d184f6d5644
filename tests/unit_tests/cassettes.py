"""What the cassette tests share (tests/unit_tests/test_<provider>_cassettes.py).

Cassettes live under ``tests/cassettes/<provider>/<source>/``: ``real`` (recorded against the
provider's own service by ``make record-<provider>``) or ``fixture`` (recorded against the
repository's protocol fixture, the only one these machines reach). Replay prefers ``real``
where it exists, and needs no server: requests are matched on method, path, query and body,
not the host. ``<PREFIX>_CASSETTE_SOURCE`` names what a recording is; ``<PREFIX>_CASSETTE_DIR``
writes (and replays) elsewhere. Credentials are filtered out before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"


def setup(
    provider: str, prefix: str, *, recording: bool, filter_headers: list[str], **vcr: Any
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The ``vcr_config`` and ``vcr_cassette_dir`` fixtures for one provider's cassettes
    (``recording``: whether this run records; ``vcr``: more vcrpy settings)."""
    root = Path(os.environ.get(f"{prefix}_CASSETTE_DIR", CASSETTES / provider))

    def source() -> str:
        if recording:
            return os.environ.get(f"{prefix}_CASSETTE_SOURCE", "real")
        return "real" if any((root / "real").glob("*.yaml")) else "fixture"

    @pytest.fixture(scope="module")
    def vcr_config() -> dict[str, Any]:
        return {
            "filter_headers": [*filter_headers, "cookie", "set-cookie"],
            "match_on": ["method", "path", "query", "body"],
            "decode_compressed_response": True,
            **vcr,
        }

    @pytest.fixture
    def vcr_cassette_dir() -> str:
        return str(root / source())

    return vcr_config, vcr_cassette_dir
