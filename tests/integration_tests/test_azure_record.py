"""``make record-azure`` (the command that re-records the Azure OpenAI cassettes against a
resource), run against the Azure fixture into a scratch folder: the key is sent but never
written, and the new cassettes replay offline."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests import peers
from tests.integration_tests import recording

pytestmark = [pytest.mark.azure, pytest.mark.timeout(600)]

ENV_KEYS = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_DEPLOYMENT",
    "AZURE_RECORDING",
    "AZURE_CASSETTE_SOURCE",
    "OPENAI_API_VERSION",
)


def test_record_command_then_offline_replay(azure_server_url: str, tmp_path: Path) -> None:
    httpx.post(f"{azure_server_url}/__fixture__/reset")
    httpx.delete(f"{azure_server_url}/__fixture__/requests")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ENV_KEYS},
        "AZURE_OPENAI_ENDPOINT": azure_server_url,
        "AZURE_OPENAI_API_KEY": peers.AZURE_FIXTURE_KEY,
        "AZURE_OPENAI_DEPLOYMENT": peers.AZURE_DEPLOYMENT,
        "AZURE_CASSETTE_SOURCE": "fixture",
        "AZURE_CASSETTE_DIR": str(tmp_path),
    }
    names, text = recording.record("azure", env, tmp_path)
    assert names == [
        "test_chat_invoke_and_stream",
        "test_forced_tool_call",
        "test_health",
    ]
    assert peers.AZURE_FIXTURE_KEY not in text and "api-key" not in text.lower()
    assert "/openai/deployments/gpt-4o/chat/completions" in text and "/openai/models" in text
    assert "text/event-stream" in text and "prompt_filter_results" in text
    # The key went to the endpoint on every request (the fixture refuses requests without one).
    log = httpx.get(f"{azure_server_url}/__fixture__/requests").json()
    assert log and all(r["has_api_key"] for r in log)
    assert httpx.get(f"{azure_server_url}/__fixture__/violations").json() == []

    # Offline: no endpoint, no key; requests answered from the new cassettes only.
    replay_env = {k: v for k, v in env.items() if k not in ENV_KEYS}
    recording.replay("azure", replay_env, 3)


def test_record_command_wants_endpoint_and_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    rec = recording.make_record("azure", env)
    assert rec.returncode != 0 and "set AZURE_OPENAI_ENDPOINT" in rec.stderr
