"""reactor.address.format_address: the one spelling of a socket address."""

from __future__ import annotations

import socket

from reactor.address import format_address


def test_tcp_addresses_ipv6_bracketed_unless_asked_not_to():
    assert format_address(("127.0.0.1", 9000)) == "127.0.0.1:9000"
    assert format_address(("::1", 9000, 0, 0)) == "[::1]:9000"
    assert format_address(("::1", 9000, 0, 0), brackets=False) == "::1:9000"
    assert format_address(("10.0.0.1", 80), brackets=False) == "10.0.0.1:80"


def test_unix_unknown_and_abstract():
    assert format_address("/tmp/x.sock") == "unix:/tmp/x.sock"
    assert format_address("") == "unix"          # the unnamed client end of a unix socket
    assert format_address(b"\0abstract") == "unix:@abstract"
    assert format_address(None) == "?"


def test_what_the_kernel_reports_for_a_real_socket_pair():
    a, b = socket.socketpair()
    with a, b:
        assert format_address(a.getsockname()) == "unix"
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        assert format_address(s.getsockname()) == f"[::1]:{s.getsockname()[1]}"
