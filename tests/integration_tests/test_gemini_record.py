"""``make record-gemini`` (the command that re-records the Gemini cassettes against the API),
run against the Gemini fixture into a scratch folder: the key is sent but never written, and
the new cassettes replay offline."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.integration_tests import recording

pytestmark = [pytest.mark.gemini, pytest.mark.timeout(600)]

SECRET = "AIzaNotARealKeyForTheRecordTest"
ENV_KEYS = (
    "GEMINI_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_RECORDING",
    "GEMINI_CASSETTE_SOURCE",
)


def test_record_command_then_offline_replay(gemini_server_url: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=gemini_server_url) as control:
        control.post("/__fixture__/reset")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ENV_KEYS},
        "GEMINI_BASE_URL": gemini_server_url,
        "GEMINI_API_KEY": SECRET,
        "GEMINI_CASSETTE_SOURCE": "fixture",
        "GEMINI_CASSETTE_DIR": str(tmp_path),
    }
    names, text = recording.record("gemini", env, tmp_path)
    assert names == [
        "test_chat_invoke_and_stream",
        "test_count_tokens_matches_usage",
        "test_forced_tool_call",
        "test_health_and_limits",
    ]
    assert SECRET not in text and "x-goog-api-key" not in text.lower()
    assert ":generateContent" in text and ":countTokens" in text and "alt=sse" in text
    assert "functionCall" in text and "inputTokenLimit" in text
    # The key went to the API on every request (the fixture refuses requests without one).
    with httpx.Client(base_url=gemini_server_url) as control:
        log = control.get("/__fixture__/requests").json()
        assert log and all(r["has_key"] and "refused" not in r for r in log)
        assert control.get("/__fixture__/violations").json() == []

    # Offline: no endpoint, no key; requests answered from the new cassettes only.
    replay_env = {k: v for k, v in env.items() if k not in ENV_KEYS}
    recording.replay("gemini", replay_env, 4)


def test_record_command_wants_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    rec = recording.make_record("gemini", env)
    assert rec.returncode != 0 and "set GEMINI_API_KEY" in rec.stderr
