"""reactor/tls.py on a real loop: echo over TLS both ways at volume, the handshake's failures
(plaintext, a cut or stalled ClientHello, a client certificate missing), outgoing connects
with SNI, ALPN, the close_notify on a graceful close, and the shutdown drain."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, FakeClock, Handler, Loop
from reactor.tls import client_context, server_context
from tests.conftest import tls_exchange, wait_for

CERTS = os.path.join(os.path.dirname(__file__), "..", "certs")
CA, CERT, KEY = (os.path.join(CERTS, n) for n in ("ca.pem", "server.pem", "server.key"))
CLIENT_CERT, CLIENT_KEY = os.path.join(CERTS, "client.pem"), os.path.join(CERTS, "client.key")
MODES = ["edge", "level"]


def run_until(loop: Loop, predicate, timeout: float = 10.0, what: str = "condition"):
    return wait_for(predicate, timeout, what, step=lambda: loop.run_once(0.01))


class Recorder(LineEchoHandler):
    """line-echo's handler, remembering its connections and why they closed."""

    def __init__(self) -> None:
        self.conns: list = []
        self.closed: list[CloseReason] = []

    def on_connect(self, conn) -> None:
        self.conns.append(conn)
        # What the handshake settled, asked while the connection is open.
        self.version = conn.get_extra_info("ssl_object").version()
        self.peercert = conn.get_extra_info("peercert")
        self.alpn = conn.get_extra_info("alpn_protocol")

    def on_close(self, conn, reason) -> None:
        self.closed.append(reason)


def tls_listener(loop: Loop, handler: Handler, ctx: ssl.SSLContext | None = None, **opts):
    ctx = ctx or server_context(CERT, KEY)
    return loop.listen(("127.0.0.1", 0), lambda: handler, LineCodec, ssl=ctx, **opts).address


def in_thread(fn) -> dict:
    """Run ``fn(out)`` on a thread; ``out`` gets its results, or the exception it raised."""
    out: dict = {}

    def body():
        try:
            fn(out)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc
        finally:
            out["done"] = True

    threading.Thread(target=body, daemon=True).start()
    return out


def tls_client(addr, **kw) -> ssl.SSLSocket:
    ctx = client_context(CA, **kw)
    raw = socket.create_connection(addr, timeout=20)
    return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


@pytest.mark.parametrize("mode", MODES)
def test_echo_over_tls_both_ways_at_once_every_byte(mode):
    """4 MiB each way at once: the kernel fills, ciphertext waits in the TLSSocket and the
    same plaintext is offered again; every byte must come back once, in order."""
    loop = Loop(selector=mode)
    h = Recorder()
    try:
        addr = tls_listener(loop, h)
        payload = b"".join(b"tls line %08d\n" % i for i in range(4 * 1024 * 1024 // 18))

        def client(out):
            with tls_client(addr) as s:
                out["got"] = tls_exchange(s, payload, len(payload), timeout=60)
                out["version"] = s.version()

        out = in_thread(client)
        run_until(loop, lambda: out.get("done"), timeout=60, what="the TLS echo")
        assert "error" not in out, out.get("error")
        assert out["got"] == payload
        assert out["version"] == "TLSv1.3"
        stats = loop.stats()["tls"]
        assert stats == {"handshakes_total": 1, "handshake_failures": {}}
        assert h.version == "TLSv1.3"
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_plaintext_client_gets_no_echo_and_is_closed_with_one_log_line(mode, caplog):
    loop = Loop(selector=mode)
    h = Recorder()
    try:
        addr = tls_listener(loop, h)
        plain = socket.create_connection(addr, timeout=10)
        plain.sendall(b"hello\nworld\n")
        caplog.set_level(logging.INFO, logger="reactor")
        got = bytearray()

        def read(out):
            while chunk := plain.recv(4096):
                got.extend(chunk)

        out = in_thread(read)
        run_until(loop, lambda: out.get("done"), what="the plaintext client closed")
        assert b"hello" not in got and b"world" not in got  # at most a TLS alert came back
        assert h.conns == [] and loop.connection_count == 0  # the handler never saw it
        failures = loop.stats()["tls"]["handshake_failures"]
        assert sum(failures.values()) == 1 and "wrong_version_number" in failures, failures
        assert loop.stats()["closed"]["tls_handshake_failed"] == 1
        lines = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None  # a line, not a traceback
        plain.close()
    finally:
        loop.close()


def client_hello() -> bytes:
    """The first flight of a real TLS client, from an SSLObject over memory BIOs."""
    inc, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(CA).wrap_bio(inc, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_a_client_that_stalls_mid_handshake_is_closed_at_the_handshake_timeout():
    clock = FakeClock(100.0)
    loop = Loop(clock=clock)
    h = Recorder()
    try:
        addr = tls_listener(loop, h, ssl_handshake_timeout_s=5.0)
        hello = client_hello()
        stalled = socket.create_connection(addr, timeout=10)
        stalled.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        run_until(loop, lambda: loop.connection_count == 1, what="the connection accepted")
        for _ in range(20):
            loop.run_once(0.005)
        assert loop.connection_count == 1  # still waiting for the rest
        clock.advance(4.9)
        loop.run_once(0.005)
        assert loop.connection_count == 1
        clock.advance(0.2)
        run_until(loop, lambda: loop.connection_count == 0, what="the handshake timeout")
        assert loop.stats()["closed"]["tls_handshake_timeout"] == 1
        assert loop.stats()["tls"]["handshake_failures"] == {"timeout": 1}
        assert h.conns == [] and h.closed == []  # on_connect never ran, so no on_close
        stalled.settimeout(5)
        assert stalled.recv(100) == b""
        stalled.close()
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_client_that_leaves_mid_handshake_is_counted_and_forgotten(mode):
    loop = Loop(selector=mode)
    try:
        addr = tls_listener(loop, Recorder())
        hello = client_hello()
        cut = socket.create_connection(addr, timeout=10)
        cut.sendall(hello[:40])
        cut.close()
        run_until(loop, lambda: loop.stats()["closed"]["tls_handshake_failed"] == 1)
        assert loop.stats()["tls"]["handshake_failures"] == {"eof": 1}
        assert loop.connection_count == 0
    finally:
        loop.close()


def test_a_required_client_certificate_is_checked():
    loop = Loop()
    h = Recorder()
    try:
        ctx = server_context(CERT, KEY, cafile=CA, verify_client=True)
        addr = tls_listener(loop, h, ctx)

        def with_cert(out):
            with tls_client(addr, certfile=CLIENT_CERT, keyfile=CLIENT_KEY) as s:
                s.sendall(b"mutual\n")
                out["echo"] = s.recv(100)

        out = in_thread(with_cert)
        run_until(loop, lambda: out.get("done"), what="the client with a certificate")
        assert out.get("echo") == b"mutual\n", out.get("error")
        assert dict(x[0] for x in h.peercert["subject"])["commonName"] == "reactor test client"

        def without(out):
            with tls_client(addr) as s:  # TLS 1.3: the refusal arrives on the first read
                s.sendall(b"anonymous\n")
                out["echo"] = s.recv(100)

        out = in_thread(without)
        run_until(loop, lambda: out.get("done"), what="the client without one")
        assert isinstance(out.get("error"), (ssl.SSLError, ConnectionError)), out
        failures = loop.stats()["tls"]["handshake_failures"]
        assert failures == {"peer_did_not_return_a_certificate": 1}, failures
    finally:
        loop.close()


class Client(Handler):
    """An outgoing line client: sends its lines when connected, collects what comes back."""

    def __init__(self, lines: list[bytes], expect: int | None = None) -> None:
        self.lines, self.got, self.closed = lines, [], []
        self.expect = len(lines) if expect is None else expect

    def on_connect(self, conn) -> None:
        for line in self.lines:
            conn.send(line)

    def on_message(self, conn, msg) -> None:
        self.got.append(msg)
        if len(self.got) == self.expect:
            conn.close()

    def on_close(self, conn, reason) -> None:
        self.closed.append(reason)


@pytest.mark.parametrize("mode", MODES)
def test_outgoing_connect_with_tls_sni_and_alpn_to_our_own_listener(mode):
    loop = Loop(selector=mode)
    server = Recorder()
    try:
        names: list = []
        ctx = server_context(CERT, KEY, alpn=["x-echo", "http/1.1"])
        ctx.sni_callback = lambda obj, name, c: names.append(name)
        addr = tls_listener(loop, server, ctx)
        lines = [b"sni %d" % i for i in range(1000)]
        client = Client(lines, expect=len(lines) + 1)
        conn = loop.connect(addr, lambda: client, LineCodec, server_hostname="localhost",
                            ssl=client_context(CA, alpn=["x-echo"]))
        conn.send(b"queued before the handshake")  # sent once it is done, before on_connect's
        run_until(loop, lambda: client.closed, what="the client's round trip")
        assert client.got == [b"queued before the handshake"] + lines
        assert names == ["localhost"]
        assert server.alpn == "x-echo"
        assert client.closed == [CloseReason.LOCAL_CLOSE]
        assert loop.stats()["tls"]["handshakes_total"] == 2  # both ends are ours
    finally:
        loop.close()


def test_outgoing_connect_refuses_a_server_whose_name_does_not_match():
    loop = Loop()
    try:
        addr = tls_listener(loop, Recorder())
        client = Client([b"x"])
        conn = loop.connect(addr, lambda: client, LineCodec, server_hostname="example.org",
                            ssl=client_context(CA))
        run_until(loop, lambda: client.closed, what="the refused handshake")
        assert client.closed == [CloseReason.TLS_HANDSHAKE_FAILED]
        assert isinstance(conn.error, ssl.SSLCertVerificationError)
        assert loop.stats()["tls"]["handshake_failures"].get("certificate_verify_failed") == 1
    finally:
        loop.close()


def test_a_graceful_close_sends_close_notify_before_the_fin():
    """The client reads the echo, then a clean TLS EOF (close_notify), not a ragged one:
    with suppress_ragged_eofs=False a FIN without close_notify would raise."""

    class EchoThenClose(Recorder):
        on_batch = None  # one line at a time, through on_message

        def on_message(self, conn, line):
            conn.send(line)
            conn.close()

    loop = Loop()
    try:
        addr = tls_listener(loop, EchoThenClose())

        def client(out):
            with tls_client(addr) as s:
                s.sendall(b"bye\n")
                got = b""
                while chunk := s.recv(100):
                    got += chunk
                out["got"] = got

        out = in_thread(client)
        run_until(loop, lambda: out.get("done"), what="the close")
        assert "error" not in out, out.get("error")
        assert out["got"] == b"bye\n"
    finally:
        loop.close()


def test_shutdown_drains_what_a_tls_peer_had_sent():
    """Loop.shutdown(): every line the kernel (and the SSL object) held is echoed before
    the close, with the drain counted in ciphertext and ended by the first short read."""
    loop = Loop()
    h = Recorder()
    try:
        addr = tls_listener(loop, h)
        made = in_thread(lambda out: out.update(s=tls_client(addr)))
        run_until(loop, lambda: made.get("done") and h.conns, what="the handshake")
        s = made["s"]
        h.conns[0].pause_reading()
        lines = b"".join(b"drain %05d\n" % i for i in range(5000))
        s.sendall(lines)
        for _ in range(20):
            loop.run_once(0.005)
        loop.shutdown(drain_timeout_s=30)
        got = bytearray()

        def read(out):
            while chunk := s.recv(1 << 16):
                got.extend(chunk)

        out = in_thread(read)
        loop.run()  # returns when the drain is done
        wait_for(lambda: out.get("done"), what="the client's EOF")
        assert bytes(got) == lines, (len(got), len(lines))
        assert h.closed == [CloseReason.SHUTDOWN]
        s.close()
    finally:
        loop.close()


# -- the TLSSocket's contract alone, over an in-memory "kernel" -------------------------------

class Wire:
    """A kernel stand-in between a TLSSocket and a client SSLObject: what the socket sends
    goes into ``sent`` as far as ``room`` allows (None: all; 0: EAGAIN)."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.inbound = bytearray()
        self.room: int | None = None

    def send(self, data) -> int:
        if self.room == 0:
            raise BlockingIOError(11, "full")
        n = len(data) if self.room is None else min(self.room, len(data))
        self.sent += bytes(data[:n])
        if self.room is not None:
            self.room -= n
        return n

    def recv_into(self, buf, nbytes=0) -> int:
        if not self.inbound:
            raise BlockingIOError(11, "empty")
        n = min(nbytes or len(buf), len(self.inbound))
        memoryview(buf)[:n] = self.inbound[:n]
        del self.inbound[:n]
        return n


def handshaken_pair():
    from reactor.tls import TLSSocket

    wire = Wire()
    tls = TLSSocket(wire, server_context(CERT, KEY), True, None, memoryview(bytearray(65536)))
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(CA).wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        wire.inbound += cout.read()
        if tls.handshake() and done:
            break
        cin.write(bytes(wire.sent))
        wire.sent.clear()
    cin.write(bytes(wire.sent))  # the server's tickets
    wire.sent.clear()
    assert tls.handshaken
    return tls, wire, client, cin


def plaintext(client, cin, wire) -> bytes:
    cin.write(bytes(wire.sent))
    wire.sent.clear()
    out = bytearray()
    while True:
        try:
            out += client.read(1 << 16)
        except ssl.SSLWantReadError:
            return bytes(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200_000), st.one_of(st.none(), st.integers(0, 90_000)),
                          st.booleans()), min_size=1, max_size=12))
def test_what_send_reports_is_what_the_peer_decrypts_once_and_in_order(steps):
    """Offers of any size against a kernel that takes any amount (or nothing): the plaintext
    counted as sent is exactly the stream the peer decrypts, nothing twice, nothing lost,
    whether the waiting ciphertext is sent by the next send or by a read in between (a read
    sends what OpenSSL wrote meanwhile)."""
    tls, wire, client, cin = handshaken_pair()
    stream = bytes(range(256)) * 2000
    offset = 0  # the connection's view: bytes accepted so far
    queued = 0  # what it holds unaccepted: offered again whole (it only grows at the end)
    for size, room, flush_by_read in steps:
        wire.room = room
        if flush_by_read:
            tls._flush_out()  # what recv_into does when OpenSSL wrote during a read
        queued = min(max(queued, size), len(stream) - offset)
        offer = stream[offset:offset + queued]
        try:
            n = tls.send(offer)
        except BlockingIOError:
            n = 0
        assert 0 <= n <= len(offer)
        offset += n
        queued -= n
    wire.room = None
    while queued:  # the kernel has room again: the connection's queue goes out
        n = tls.send(stream[offset:offset + queued])
        offset += n
        queued -= n
    assert tls._pending is None
    assert plaintext(client, cin, wire) == stream[:offset]


class MemoryClient:
    """A TLS client over memory BIOs on a blocking socket, so a test decides exactly which
    records go out in which segment (data with the close_notify, the Finished with both)."""

    def __init__(self, addr) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_context(CA).wrap_bio(self.inc, self.out, server_hostname="localhost")

    def handshake(self, send_last_flight: bool = True) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                self.inc.write(self.sock.recv(65536))
        if send_last_flight:  # the client's Finished
            self.sock.sendall(self.out.read())

    def read_all(self) -> bytes:
        got = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
                if not chunk:  # the server's close_notify
                    return bytes(got)
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(got)
            data = self.sock.recv(65536)
            if not data:
                self.inc.write_eof()
            else:
                self.inc.write(data)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ending", ["close_notify", "close_notify+fin", "finished+all+fin",
                                    "fin"])
def test_a_peer_that_ends_its_stream_gets_every_line_and_its_partial_line(mode, ending):
    """Data and the end of the stream in one segment -- close_notify with TCP kept open (Go's
    CloseWrite), close_notify and FIN, even the handshake's Finished with them, or a FIN
    without close_notify: the lines come back, then the trailing partial line (the echo
    contract), then the server's own end; nothing waits for an edge that never comes."""
    loop = Loop(selector=mode)
    try:
        addr = tls_listener(loop, Recorder())
        c = MemoryClient(addr)

        def client(out):
            c.handshake(send_last_flight=ending != "finished+all+fin")
            c.obj.write(b"one\ntwo\npartial")
            if ending != "fin":
                with pytest.raises(ssl.SSLWantReadError):
                    c.obj.unwrap()  # our close_notify, in the BIO now
            c.sock.sendall(c.out.read())  # everything in one segment
            if ending != "close_notify":
                c.sock.shutdown(socket.SHUT_WR)
            out["got"] = c.read_all()

        out = in_thread(client)
        run_until(loop, lambda: out.get("done"), what="the echo and the server's end")
        assert "error" not in out, out.get("error")
        assert out["got"] == b"one\ntwo\npartial"
        c.sock.close()
    finally:
        loop.close()


def test_a_failed_handshake_is_not_an_on_close_for_a_handler_that_never_opened():
    """No on_connect, so no on_close: a few more turns of the loop after the refusal, for the
    on_close that call_soon would have run."""
    loop = Loop()
    h = Recorder()
    try:
        addr = tls_listener(loop, h)
        plain = socket.create_connection(addr, timeout=10)
        plain.sendall(b"not tls\n")
        run_until(loop, lambda: loop.stats()["closed"]["tls_handshake_failed"] == 1)
        for _ in range(10):
            loop.run_once(0.005)
        assert h.conns == [] and h.closed == []
        plain.close()
    finally:
        loop.close()
