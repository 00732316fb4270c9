"""docs/examples/push.py, black-box: subscribers and producers over real sockets against the
example run as a subprocess. Each subscriber gets exactly its topics' messages, in order and
byte for byte; heartbeats keep answering subscribers and drop silent ones; bad commands get
one error line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import recv_until_eof, wait_for
from tests.integration.example_proc import EXAMPLES, Example, Lines, example_fixture

PUSH = EXAMPLES / "push.py"


class Push(Example):
    """The example (subscribers on an ephemeral port) and its peers, read line by line."""

    def __init__(self, *args: str) -> None:
        super().__init__("push.py", *args, announces=("listening", "publishing"))

    def subscriber(self, *topics: bytes) -> Lines:
        peer = Lines(self.connect())
        for topic in topics:
            peer.sock.sendall(b"SUB %s\n" % topic)
            assert peer.line() == b"OK SUB %s" % topic
        return peer

    def producer(self) -> Lines:
        return Lines(self.connect("publishing"))


push = example_fixture(Push)


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def payload(topic: bytes, i: int) -> bytes:
    """Distinct, numbered, and with the bytes a sloppy gateway would mangle."""
    return b"%s message %06d with spaces,\r\x00\xff and padding %s" % (topic, i, b"." * (i % 50))


def test_help():
    done = subprocess.run([sys.executable, str(PUSH), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "--publish-unix" in done.stdout


def test_each_subscriber_gets_exactly_its_topics_messages_in_order(push, tmp_path):
    sock_path = str(tmp_path / "publish.sock")
    p = push("--publish-unix", sock_path, "--heartbeat", "0")
    assert stat_mode(sock_path) == 0o600
    a1, a2, b1 = p.subscriber(b"A"), p.subscriber(b"A"), p.subscriber(b"B")
    n, m = 6000, 4000  # about 600 KB: many times what one loop iteration may hand out
    order = [b"A" if i % 5 < 3 else b"B" for i in range(n + m)]  # interleaved, 3 A to 2 B
    counts = {b"A": 0, b"B": 0}
    wire = bytearray()
    want = {b"A": bytearray(), b"B": bytearray()}
    replies = bytearray()
    for topic in order:
        body = payload(topic, counts[topic])
        counts[topic] += 1
        wire += b"PUB %s %s\n" % (topic, body)
        want[topic] += b"MSG %s %s\n" % (topic, body)
        replies += b"OK 2\n" if topic == b"A" else b"OK 1\n"
    assert counts == {b"A": n, b"B": m}

    prod = p.producer()
    got: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, peer=peer, topic=topic: got.__setitem__(
        name, peer.exactly(len(want[topic]), 20)), daemon=True)
        for name, peer, topic in (("a1", a1, b"A"), ("a2", a2, b"A"), ("b1", b1, b"B"))]
    for t in readers:
        t.start()
    prod.sock.sendall(bytes(wire))
    assert prod.exactly(len(replies), 20) == bytes(replies)
    for t in readers:
        t.join(20)
    assert got["a1"] == bytes(want[b"A"])
    assert got["a2"] == bytes(want[b"A"])
    assert got["b1"] == bytes(want[b"B"])
    # Nothing more was sent to anyone: the next message of each topic comes next.
    prod.sock.sendall(b"PUB B last-b\nPUB A last-a\nPUB C nobody\n")
    assert prod.exactly(15) == b"OK 1\nOK 2\nOK 0\n"
    assert a1.line() == a2.line() == b"MSG A last-a"
    assert b1.line() == b"MSG B last-b"
    assert a1.buf == a2.buf == b1.buf == b""
    prod.sock.close()
    for peer in (a1, a2, b1):
        peer.sock.close()
    assert p.stop() == 0
    assert not os.path.exists(sock_path)  # the listener removed its socket file
    assert p.logged(f"published {n + m + 3} messages: {2 * n + m + 3} deliveries, 0 skipped")


def test_publishing_over_tcp_and_unsubscribing(push):
    p = push("--publish-port", "0", "--heartbeat", "0")
    sub = p.subscriber(b"news", b"weather")
    prod = p.producer()
    prod.sock.sendall(b"PUB news one\nPUB weather two\n")
    assert prod.line() == b"OK 1" and prod.line() == b"OK 1"
    assert sub.line() == b"MSG news one" and sub.line() == b"MSG weather two"
    sub.sock.sendall(b"UNSUB news\n")
    assert sub.line() == b"OK UNSUB news"
    prod.sock.sendall(b"PUB news three\nPUB weather four\n")
    assert prod.line() == b"OK 0" and prod.line() == b"OK 1"
    assert sub.line() == b"MSG weather four"


def test_heartbeat_keeps_an_answering_subscriber_and_drops_a_silent_one(push, tmp_path):
    p = push("--publish-unix", str(tmp_path / "p.sock"), "--heartbeat", "0.3")
    good = p.subscriber(b"t")
    pings = queue.Queue()
    others: list[bytes] = []

    def answer() -> None:  # a live client: PONG to every PING
        try:
            while True:
                line = good.line(30)
                if line == b"PING":
                    good.sock.sendall(b"PONG\n")
                    pings.put(time.monotonic())
                else:
                    others.append(line)
        except (AssertionError, OSError):
            pass

    threading.Thread(target=answer, daemon=True).start()
    bad = p.subscriber(b"t")
    start = time.monotonic()
    assert bad.line(5) == b"PING"  # and never answers
    assert recv_until_eof(bad.sock, 5) == b""  # dropped: a FIN, the next heartbeat after the PING
    assert 0.45 < time.monotonic() - start < 3
    p.logged("did not answer PING: dropped")
    wait_for(lambda: pings.qsize() >= 4, 5, "4 PINGs answered")  # 1.2 s and more: still here
    prod = p.producer()
    prod.sock.sendall(b"PUB t alive\n")
    assert prod.line() == b"OK 1"  # the dropped one is no longer subscribed
    wait_for(lambda: b"MSG t alive" in others, 5, "the message at the live subscriber")


def test_bad_commands_get_one_error_line_and_the_connection_stays(push):
    p = push("--publish-port", "0", "--heartbeat", "0")
    sub = p.subscriber()
    for bad, err in ((b"HELLO", b"ERR unknown command; use SUB topic, UNSUB topic or PONG"),
                     (b"sub lower", b"ERR unknown command; use SUB topic, UNSUB topic or PONG"),
                     (b"SUB", b"ERR usage: SUB topic (1 to 64 bytes, no spaces)"),
                     (b"SUB two words", b"ERR usage: SUB topic (1 to 64 bytes, no spaces)"),
                     (b"UNSUB " + b"x" * 65, b"ERR usage: UNSUB topic (1 to 64 bytes, no spaces)"),
                     (b"", b"ERR unknown command; use SUB topic, UNSUB topic or PONG")):
        sub.sock.sendall(bad + b"\n")
        assert sub.line() == err, bad
    sub.sock.sendall(b"SUB " + b"x" * 64 + b"\n")
    assert sub.line() == b"OK SUB " + b"x" * 64
    prod = p.producer()
    for bad in (b"PUB", b"PUB topic-only", b"PUB two words", b"SUB x", b"PUB  empty-topic"):
        prod.sock.sendall(bad + b"\n")
        if bad == b"PUB two words":  # topic "two", payload "words": valid, nobody listens
            assert prod.line() == b"OK 0"
        else:
            assert prod.line() == b"ERR usage: PUB topic payload", bad
    prod.sock.sendall(b"PUB " + b"x" * 64 + b" still served\n")
    assert prod.line() == b"OK 1"
    assert sub.line() == b"MSG " + b"x" * 64 + b" still served"


def test_sigterm_drains_and_exits_zero(push, tmp_path):
    sock_path = str(tmp_path / "p.sock")
    p = push("--publish-unix", sock_path)
    sub = p.subscriber(b"t")
    prod = p.producer()
    prod.sock.sendall(b"PUB t before the signal\n")
    assert prod.line() == b"OK 1"
    assert sub.line() == b"MSG t before the signal"
    p.proc.send_signal(signal.SIGTERM)
    assert recv_until_eof(sub.sock, 5) == b""
    assert recv_until_eof(prod.sock, 5) == b""
    sub.sock.close()
    prod.sock.close()
    assert p.proc.wait(5) == 0
    assert not os.path.exists(sock_path)
    p.logged("SIGTERM: draining 2 connection(s)")
