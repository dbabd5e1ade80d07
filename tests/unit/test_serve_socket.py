"""The gateway's listening socket (``stealproof serve``)."""

from __future__ import annotations

import socket

import pytest

from stealproof.cli.serve import bind_socket
from stealproof.errors import ConfigError


def test_accepted_connections_have_nagle_off() -> None:
    """With Nagle on, a response written as head + body waits ~40 ms for a delayed ACK."""
    server = bind_socket("127.0.0.1", 0)
    try:
        assert server.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert client.getsockname()[0] == "127.0.0.1"
    finally:
        server.close()


def test_a_taken_port_is_a_config_error() -> None:
    first = bind_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
    finally:
        first.close()
