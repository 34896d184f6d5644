"""``make record-deepseek`` (the command that re-records the DeepSeek cassettes against the
API), run against the DeepSeek fixture into a scratch folder: the key is sent but never written,
and the new cassettes replay offline."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.integration_tests import recording

pytestmark = [pytest.mark.deepseek, pytest.mark.timeout(600)]

SECRET = "sk-not-a-real-key-for-the-record-test"
ENV_KEYS = (
    "DEEPSEEK_API_BASE",
    "DEEPSEEK_API_KEY",
    "DEEPSEEK_RECORDING",
    "DEEPSEEK_CASSETTE_SOURCE",
)


def test_record_command_then_offline_replay(deepseek_server_url: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=deepseek_server_url) as control:
        control.post("/__fixture__/reset")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ENV_KEYS},
        "DEEPSEEK_API_BASE": deepseek_server_url,
        "DEEPSEEK_API_KEY": SECRET,
        "DEEPSEEK_CASSETTE_SOURCE": "fixture",
        "DEEPSEEK_CASSETTE_DIR": str(tmp_path),
    }
    names, text = recording.record("deepseek", env, tmp_path)
    assert names == [
        "test_chat_invoke_and_stream",
        "test_forced_tool_call",
        "test_health",
        "test_reasoner_keeps_reasoning_and_does_not_send_it_back",
    ]
    assert SECRET not in text and "authorization" not in text.lower()
    assert "/chat/completions" in text and "/models" in text
    assert "text/event-stream" in text and "reasoning_content" in text
    # The key went to the API on every request (the fixture refuses requests without one).
    with httpx.Client(base_url=deepseek_server_url) as control:
        log = control.get("/__fixture__/requests").json()
        assert log and all(r["has_authorization"] and "refused" not in r for r in log)
        assert control.get("/__fixture__/violations").json() == []

    # Offline: no endpoint, no key; requests answered from the new cassettes only.
    replay_env = {k: v for k, v in env.items() if k not in ENV_KEYS}
    recording.replay("deepseek", replay_env, 4)


def test_record_command_wants_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    rec = recording.make_record("deepseek", env)
    assert rec.returncode != 0 and "set DEEPSEEK_API_KEY" in rec.stderr
