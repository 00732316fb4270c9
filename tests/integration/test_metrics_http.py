"""GET /metrics on a real loop, over real sockets: urllib as the client (and raw sockets for
what urllib will not send), the loop running in a thread of its own."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import Loop
from reactor.service.metrics import CONTENT_TYPE, serve_metrics
from reactor.stats import loop_stats
from tests.conftest import recv_until_eof, wait_for

# No proxy from the environment between the test and 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Served:
    """A loop with ``clients`` echo connections open and a metrics listener, run in a thread."""

    def __init__(self, clients: int = 3, **metrics_kw) -> None:
        self.loop = Loop()
        echo = self.loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec)
        self.metrics = serve_metrics(self.loop, ("127.0.0.1", 0), **metrics_kw)
        self.url = "http://127.0.0.1:%d" % self.metrics.address[1]
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()
        self.clients = [socket.create_connection(echo.address, timeout=5) for _ in range(clients)]
        wait_for(lambda: self.loop.connection_count == clients, what="the echo clients accepted")

    def get(self, path: str = "/metrics", method: str = "GET", data: bytes | None = None):
        req = urllib.request.Request(self.url + path, method=method, data=data)
        return OPENER.open(req, timeout=10)

    def raw(self, data: bytes = b"") -> socket.socket:
        s = socket.create_connection(self.metrics.address, timeout=10)
        if data:
            s.sendall(data)
        return s

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()
        for c in self.clients:
            c.close()
        self.loop.close()


@pytest.fixture
def served():
    made: list[Served] = []

    def make(**kw) -> Served:
        made.append(Served(**kw))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def samples_of(body: bytes) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples if not s.labels}


def test_get_metrics_answers_200_with_the_loops_figures(served):
    s = served()
    with s.get() as resp:
        body = resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        assert resp.headers["Connection"] == "close"
        assert int(resp.headers["Content-Length"]) == len(body)
    figures = samples_of(body)
    assert figures["reactor_connections"] == s.loop.connection_count == 3
    assert figures["reactor_accepted_total"] == 3
    # The scrape itself is not one of the service's connections, nor its closes.
    for _ in range(3):
        with s.get() as resp:
            figures = samples_of(resp.read())
    assert figures["reactor_connections"] == 3 and figures["reactor_accepted_total"] == 3
    closes = [smp.value for fam in text_string_to_metric_families(body.decode())
              for smp in fam.samples if smp.name == "reactor_closed_total"]
    assert len(closes) > 10 and sum(closes) == 0


def test_head_has_the_headers_and_no_body(served):
    s = served()
    with s.get(method="HEAD") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        assert int(resp.headers["Content-Length"]) > 500
        assert resp.read() == b""
    # Byte for byte: nothing follows the head before the server closes.
    raw = recv_until_eof(s.raw(b"HEAD /metrics HTTP/1.0\r\n\r\n"))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == 1


def test_other_paths_are_404(served):
    s = served()
    for path in ("/", "/metricsx", "/metrics/", "/stats"):
        with pytest.raises(urllib.error.HTTPError) as info:
            s.get(path)
        assert info.value.code == 404
        assert info.value.headers["Connection"] == "close"


def test_other_methods_are_405_with_allow(served):
    s = served()
    for method, data in (("POST", b"x=1"), ("PUT", b"{}"), ("DELETE", None)):
        with pytest.raises(urllib.error.HTTPError) as info:
            s.get(method=method, data=data)
        assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"
    with s.get() as resp:  # and the server goes on
        assert resp.status == 200


@pytest.mark.parametrize("data", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n\r\n",                       # 1.1 without Host
    b"GET /metrics HTTP/1.0\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"\x00\xff" * 5000,
])
def test_a_malformed_or_oversized_head_is_400_then_close(served, data):
    s = served()
    sock = s.raw()
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):  # refused before it all went out
        pass
    reply = recv_until_eof(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply[:80]
    head, _sep, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    assert f"Content-Length: {len(body)}".encode() in head
    with s.get() as resp:
        assert resp.status == 200


def test_pipelined_requests_get_one_answer_then_close(served):
    s = served()
    reply = recv_until_eof(s.raw(b"GET /metrics HTTP/1.0\r\n\r\n" * 3))
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_client_that_sends_nothing_is_closed(served):
    s = served(idle_timeout_s=0.3)
    sock = s.raw()
    start = time.monotonic()
    assert recv_until_eof(sock, timeout=10) == b""  # EOF, not our timeout
    assert 0.25 < time.monotonic() - start < 5
    sock.close()


def test_a_head_that_trickles_in_is_timed_out_with_408(served):
    s = served(idle_timeout_s=0.5)
    sock = s.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    start = time.monotonic()
    # A byte every 50 ms keeps the idle timer from firing: only the head's age can end it.
    while not select.select([sock], [], [], 0.05)[0]:
        assert time.monotonic() - start < 10, "the trickling head was never timed out"
        sock.send(b"a")
    reply = recv_until_eof(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply[:80]
    assert 0.45 < time.monotonic() - start < 5


def test_connections_over_max_conns_get_503_and_the_slots_come_back(served):
    s = served(max_conns=2, idle_timeout_s=30)
    held = [s.raw(), s.raw()]
    reply = recv_until_eof(s.raw())
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply[:80]
    for h in held:
        h.close()

    def answered() -> bool:
        try:
            with s.get() as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            return False

    wait_for(answered, what="a slot given back", step=lambda: time.sleep(0.02))


def test_an_asynchronous_provider_and_a_supervisor_document(served):
    holder = {}

    def provider(reply):  # answers later, on the loop, as the supervisor's gather does
        lp = holder["loop"]
        worker = loop_stats(lp)
        doc = {"version": 1, "role": "supervisor", "uptime_s": 1.5, "restarts": 0,
               "workers": [{"index": 0, "pid": 1, **worker},
                           {"index": 1, "pid": 2, "error": "no answer"}]}
        lp.call_later(0.05, reply, doc)

    s = served(provider=provider)
    holder["loop"] = s.loop
    with s.get() as resp:
        body = resp.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["reactor_workers"].samples[0].value == 2
    assert fams["reactor_workers_answered"].samples[0].value == 1
    (conns,) = fams["reactor_connections"].samples
    assert conns.labels == {"worker": "0"} and conns.value == 3
    # A client that shuts down its side after the request still gets the late answer.
    sock = s.raw(b"GET /metrics HTTP/1.0\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    reply = recv_until_eof(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b'reactor_workers_answered 1\n' in reply


def test_a_document_that_cannot_be_rendered_is_500(served):
    s = served(provider=lambda reply: reply({"connections": "many"}))
    with pytest.raises(urllib.error.HTTPError) as info:
        s.get()
    assert info.value.code == 500
    with pytest.raises(urllib.error.HTTPError) as info:
        s.get("/nope")
    assert info.value.code == 404


def test_bad_arguments_are_refused():
    lp = Loop()
    try:
        with pytest.raises(ValueError, match="must be \\(host, port\\)"):
            serve_metrics(lp, "/tmp/metrics.sock")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_conns"):
            serve_metrics(lp, ("127.0.0.1", 0), max_conns=0)
        with pytest.raises(ValueError, match="idle_timeout_s"):
            serve_metrics(lp, ("127.0.0.1", 0), idle_timeout_s=0)
    finally:
        lp.close()
