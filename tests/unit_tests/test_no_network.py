"""The unit tier cannot reach the network by accident (tests/unit_tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketConnectBlockedError

from langchain_multillm import ChatTGI
from tests import peers

# TEST-NET-1 (RFC 5737): documentation only, never routed; the guard refuses it before trying.
ELSEWHERE = "192.0.2.1"


def test_a_connect_beyond_this_machine_is_refused() -> None:
    with (
        pytest.warns(UserWarning, match="socket.socket.connect"),
        pytest.raises(SocketConnectBlockedError),
        socket.socket() as s,
    ):
        s.connect((ELSEWHERE, 80))


def test_local_connects_are_allowed() -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", peers.free_port()))  # allowed: nothing listens there


def test_a_model_pointed_elsewhere_is_stopped_before_it_sends() -> None:
    llm = ChatTGI(base_url=f"http://{ELSEWHERE}", model="m", max_retries=0, health_timeout=2)
    with pytest.warns(UserWarning, match="socket.socket.connect"):
        report = llm.health()
    assert not report.alive
    assert "socket.socket.connect" in report.detail
