"""The PROXY protocol on a real loop (reactor/preamble.py, listener.py): the header is read
before the connection exists, its address becomes the peer (and what per-address caps count),
nothing after it is lost (plain lines, a TLS ClientHello), and every bad start is refused and
counted without the handler ever seeing it."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import struct
import threading

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, FakeClock, Loop
from reactor.proxy_protocol import TLV_UNIQUE_ID
from reactor.tls import client_context, server_context
from tests.conftest import wait_for

MODES = ["edge", "level"]
CERTS = os.path.join(os.path.dirname(__file__), "..", "certs")
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def run_until(loop: Loop, predicate, timeout: float = 10.0, what: str = "condition"):
    return wait_for(predicate, timeout, what, step=lambda: loop.run_once(0.01))


def v1(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 9000) -> bytes:
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, sport: int, tlvs: list[tuple[int, bytes]] = (), local: bool = False) -> bytes:
    body = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("10.0.0.1").packed
            + struct.pack("!HH", sport, 9000))
    body += b"".join(struct.pack("!BH", t, len(v)) + v for t, v in tlvs)
    return V2_SIG + bytes([0x20 if local else 0x21, 0x11]) + struct.pack("!H", len(body)) + body


class Recorder(LineEchoHandler):
    def __init__(self) -> None:
        self.peers: list = []
        self.headers: list = []
        self.closed: list[CloseReason] = []

    def on_connect(self, conn) -> None:
        self.peers.append(conn.peer)
        self.headers.append(conn.get_extra_info("proxy_header"))

    def on_close(self, conn, reason) -> None:
        self.closed.append(reason)


def proxied(loop: Loop, handler, **kw):
    return loop.listen(("127.0.0.1", 0), lambda: handler, LineCodec, proxy_protocol=True,
                       per_ip_reject_message=b"ERR too many\n", **kw)


def echo(loop: Loop, sock: socket.socket, payload: bytes) -> bytes:
    sock.setblocking(False)
    got = bytearray()

    def step():
        loop.run_once(0.005)
        try:
            got.extend(sock.recv(1 << 16))
        except BlockingIOError:
            pass

    wait_for(lambda: len(got) >= len(payload), what="the echo", step=step)
    return bytes(got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_the_header_names_the_peer_and_nothing_after_it_is_lost(mode, kind):
    loop = Loop(selector=mode)
    h = Recorder()
    try:
        addr = proxied(loop, h).address
        header = (v1("203.0.113.7", 40001) if kind == "v1"
                  else v2("203.0.113.7", 40001, [(TLV_UNIQUE_ID, b"req-42")]))
        lines = b"".join(b"line %d\n" % i for i in range(2000))
        with socket.create_connection(addr) as s:
            s.sendall(header + lines)  # the header and the first lines in one segment
            assert echo(loop, s, lines) == lines
        assert h.peers == [("203.0.113.7", 40001)]
        hdr = h.headers[0]
        assert hdr.version == (1 if kind == "v1" else 2) and hdr.destination == ("10.0.0.1", 9000)
        if kind == "v2":
            assert hdr.tlv(TLV_UNIQUE_ID) == b"req-42"
        doc = loop.stats()
        assert doc["proxy_protocol"] == {"accepted_total": 1, "rejected": {}}
        assert doc["listeners"][0]["proxy_protocol"] is True and doc["accepted"] == 1
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_header_in_pieces_is_waited_for(mode):
    loop = Loop(selector=mode)
    h = Recorder()
    try:
        addr = proxied(loop, h).address
        header = v2("198.51.100.2", 5555)
        with socket.create_connection(addr) as s:
            for cut in (1, 13, 16, len(header)):  # signature, command, length, addresses
                s.sendall(header[:cut])
                header = header[cut:]
                for _ in range(5):
                    loop.run_once(0.005)
                assert h.peers == [] or not header  # no connection before the whole header
            s.sendall(b"after\n")
            assert echo(loop, s, b"after\n") == b"after\n"
        assert h.peers == [("198.51.100.2", 5555)]
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("start, reason", [
    (b"GET / HTTP/1.1\r\n\r\n", "not_proxy"),
    (b"hello\n", "not_proxy"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "v1_malformed"),
    (b"PROXY TCP4 1.2.3.04 5.6.7.8 80 90\r\n", "bad_address"),
    (V2_SIG + b"\x31\x11\x00\x0c" + bytes(12), "v2_bad_version"),
])
def test_a_bad_start_is_refused_counted_and_never_reaches_the_handler(mode, start, reason):
    loop = Loop(selector=mode)
    h = Recorder()
    try:
        addr = proxied(loop, h).address
        s = socket.create_connection(addr, timeout=10)
        s.sendall(start)
        run_until(loop, lambda: loop.stats()["proxy_protocol"]["rejected"], what="the refusal")
        assert loop.stats()["proxy_protocol"]["rejected"] == {reason: 1}
        assert loop.stats()["closed"]["proxy_protocol"] == 1
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):  # a reset, not an echo
                if not s.recv(100):
                    raise AssertionError("an orderly EOF, not a reset")
        assert h.peers == [] and h.closed == [] and loop.connection_count == 0
        s.close()
    finally:
        loop.close()


def test_no_header_in_time_and_a_peer_gone_mid_header_are_refused():
    clock = FakeClock(0.0)
    loop = Loop(clock=clock)
    h = Recorder()
    try:
        addr = proxied(loop, h, proxy_timeout_s=3.0).address
        silent = socket.create_connection(addr)
        cut = socket.create_connection(addr)
        cut.sendall(b"PROXY TCP4 1.2.3.4")
        run_until(loop, lambda: loop.stats()["listeners"][0]["accepted"] == 0 and
                  len(loop.listeners[0]._preambles) == 2, what="both waiting")
        cut.close()
        run_until(loop, lambda: loop.stats()["proxy_protocol"]["rejected"] == {"eof": 1})
        clock.advance(2.9)
        loop.run_once(0.01)
        assert loop.stats()["proxy_protocol"]["rejected"] == {"eof": 1}
        clock.advance(0.2)
        run_until(loop, lambda: loop.stats()["proxy_protocol"]["rejected"].get("timeout") == 1)
        assert h.peers == [] and loop.listeners[0]._preambles == {}
        silent.close()
    finally:
        loop.close()


def test_the_per_address_cap_counts_the_client_not_the_balancer():
    loop = Loop()
    h = Recorder()
    try:
        addr = proxied(loop, h, max_conns_per_ip=1).address
        a = socket.create_connection(addr)
        a.sendall(v1("192.0.2.1", 1000) + b"a\n")
        assert echo(loop, a, b"a\n") == b"a\n"
        b = socket.create_connection(addr)  # the same client again, through the balancer
        b.sendall(v1("192.0.2.1", 1001))
        b.setblocking(False)
        got = bytearray()

        def step():
            loop.run_once(0.005)
            try:
                got.extend(b.recv(100))
            except BlockingIOError:
                pass

        wait_for(lambda: got.endswith(b"\n"), what="the per-address refusal", step=step)
        assert bytes(got) == b"ERR too many\n"
        c = socket.create_connection(addr)  # another client, same balancer address
        c.sendall(v1("192.0.2.2", 1002) + b"c\n")
        assert echo(loop, c, b"c\n") == b"c\n"
        assert h.peers == [("192.0.2.1", 1000), ("192.0.2.2", 1002)]
        assert loop.stats()["per_ip_rejections"] == 1
        for s in (a, b, c):
            s.close()
    finally:
        loop.close()


def test_a_local_header_keeps_the_real_peer():
    loop = Loop()
    h = Recorder()
    try:
        addr = proxied(loop, h).address
        with socket.create_connection(addr) as s:
            s.sendall(v2("192.0.2.9", 1, local=True) + b"health\n")
            assert echo(loop, s, b"health\n") == b"health\n"
            assert h.peers == [s.getsockname()]  # the balancer's own connection
            assert h.headers[0].command == "LOCAL"
    finally:
        loop.close()


def test_tls_after_the_header():
    """HAProxy in TCP mode with send-proxy in front of a TLS listener: the header is plain,
    the ClientHello follows it in the same stream and must reach the TLS layer whole."""
    loop = Loop()
    h = Recorder()
    try:
        ctx = server_context(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
        addr = proxied(loop, h, ssl=ctx).address
        out: dict = {}

        def client():
            raw = socket.create_connection(addr, timeout=10)
            raw.sendall(v1("203.0.113.50", 4242))
            with client_context(os.path.join(CERTS, "ca.pem")).wrap_socket(
                    raw, server_hostname="localhost") as s:
                s.sendall(b"secret\n")
                out["echo"] = s.recv(100)

        t = threading.Thread(target=client, daemon=True)
        t.start()
        run_until(loop, lambda: "echo" in out, what="the TLS echo behind the header")
        assert out["echo"] == b"secret\n"
        assert h.peers == [("203.0.113.50", 4242)]
        assert loop.stats()["tls"]["handshakes_total"] == 1
    finally:
        loop.close()


def test_closing_the_listener_closes_the_sockets_still_waiting():
    loop = Loop()
    try:
        lst = proxied(loop, Recorder())
        waiting = socket.create_connection(lst.address, timeout=10)
        run_until(loop, lambda: lst._preambles, what="one waiting for its header")
        lst.close()
        assert lst._preambles == {}
        assert waiting.recv(100) == b""  # closed (SO_LINGER is not set: nothing was sent)
        waiting.close()
    finally:
        loop.close()
