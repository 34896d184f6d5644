"""``make record-tgi`` (the command that re-records the TGI cassettes against a real server),
run against the TGI fixture into a scratch folder; then the new cassettes replay offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration_tests import recording

pytestmark = [pytest.mark.tgi, pytest.mark.timeout(600)]

SECRET = "hf_not_a_real_token_for_the_record_test"


def test_record_command_then_offline_replay(tgi_server_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TGI_BASE_URL": tgi_server_url,
        "TGI_CASSETTE_SOURCE": "fixture",
        "TGI_CASSETTE_DIR": str(tmp_path),
        "HF_TOKEN": SECRET,
    }
    names, text = recording.record("tgi", env, tmp_path)
    assert names == [
        "test_chat_invoke_and_stream",
        "test_generate_and_generate_stream",
        "test_health",
        "test_limits_and_counts",
    ]
    assert SECRET not in text and "authorization" not in text.lower()
    assert "/v1/chat/completions" in text and "/generate_stream" in text

    # Offline: no TGI_BASE_URL, requests answered from the new cassettes only.
    replay_env = {k: v for k, v in env.items() if k not in ("TGI_BASE_URL", "HF_TOKEN")}
    recording.replay("tgi", replay_env, 4)


def test_record_command_wants_a_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TGI_BASE_URL"}
    rec = recording.make_record("tgi", env)
    assert rec.returncode != 0 and "set TGI_BASE_URL" in rec.stderr
