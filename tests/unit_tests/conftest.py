"""Unit tests reach nothing beyond this machine: a socket may connect to 127.0.0.1 / localhost
(the in-process fixture servers, a closed port) or a Unix socket, and a connect anywhere else
fails with pytest-socket's ``SocketConnectBlockedError``: what ``--disable-socket
--allow-hosts=127.0.0.1,localhost`` does, for this tier only (the integration, server and
contract tiers keep their sockets). A test that truly needs more says so with
``@pytest.mark.enable_socket``."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_socket

LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1"]


@pytest.fixture(autouse=True)
def _local_sockets_only(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("enable_socket"):
        yield
        return
    connect = socket.socket.connect
    pytest_socket.socket_allow_hosts(LOCAL_HOSTS, allow_unix_socket=True)
    try:
        yield
    finally:
        socket.socket.connect = connect  # type: ignore[method-assign]
