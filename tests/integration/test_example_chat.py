"""docs/examples/chat.py, black-box: real clients over real sockets against the example run
as a subprocess. A flood reaches a reader that keeps up, every line in order, while a client
that never reads is skipped and then closed as a slow consumer; idle clients are dropped."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import recv_until_eof
from tests.integration.example_proc import EXAMPLES, Example, Lines, example_fixture

CHAT = EXAMPLES / "chat.py"


class Chat(Example):
    """The example; ``join()`` connects a client."""

    def __init__(self, *args: str) -> None:
        super().__init__("chat.py", *args)

    def join(self, rcvbuf: int = 0) -> Client:
        sock = socket.socket()
        if rcvbuf:  # before connect, so the window it advertises is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(self.address)
        return Client(sock)


class Client(Lines):
    """A chat client, read line by line."""

    def welcome_id(self) -> int:
        line = self.line()
        assert line.startswith(b"* welcome, you are client "), line
        return int(line.split()[5].rstrip(b";"))


chat = example_fixture(Chat)


def tcp_wmem_max() -> int:
    """The most a kernel send queue may grow to by autotuning: what a non-reader absorbs."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except OSError:
        return 4 << 20


def test_help():
    done = subprocess.run([sys.executable, str(CHAT), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "--idle-timeout" in done.stdout


def test_lines_go_to_every_other_client_not_back(chat):
    c = chat()
    a = c.join()
    a_id = a.welcome_id()
    b = c.join()
    b_id = b.welcome_id()
    assert a.line() == b"* client %d joined" % b_id
    a.sock.sendall(b"hello\r\n\x00\xff\n")
    assert b.line() == b"%d: hello\r" % a_id
    assert b.line() == b"%d: \x00\xff" % a_id
    b.sock.sendall(b"hi\n")
    assert a.line() == b"%d: hi" % b_id  # not its own lines first: they never come back
    b.sock.close()
    assert a.line() == b"* client %d left (peer_closed)" % b_id


def test_flood_reaches_a_reader_in_order_while_a_non_reader_is_skipped_then_closed(chat):
    c = chat("--write-timeout", "1")
    reader = c.join()
    reader.welcome_id()
    # Never reads a byte, with a small receive window: the kernel absorbs what fits in the
    # server's send queue (tcp_wmem's max at most) and the rest piles up at the server.
    lagger = c.join(rcvbuf=4096)
    lag_line = reader.line()
    lag_id = int(lag_line.split()[2])
    assert lag_line == b"* client %d joined" % lag_id
    flooder = c.join()
    flood_id = flooder.welcome_id()
    assert reader.line() == b"* client %d joined" % flood_id

    count = max(20_000, (tcp_wmem_max() + (2 << 20)) // 64)
    flood = b"".join(b"flood line %08d %s\n" % (i, b"x" * 43) for i in range(count))
    assert len(flood) == 64 * count
    prefix = b"%d: " % flood_id
    want = b"".join(prefix + ln + b"\n" for ln in flood.splitlines())

    got = bytearray(reader.buf)
    done = threading.Event()

    def read_all() -> None:
        reader.sock.settimeout(20)
        while len(got) < len(want):
            data = reader.sock.recv(1 << 20)
            if not data:
                break
            got.extend(data)
        done.set()

    t = threading.Thread(target=read_all, daemon=True)
    t.start()
    start = time.monotonic()
    flooder.sock.sendall(flood)
    assert done.wait(20), f"the reader got {len(got)} of {len(want)} bytes"
    assert bytes(got[:len(want)]) == want  # every line, in order, byte for byte
    reader.buf = bytes(got[len(want):])

    c.logged(f"client {lag_id} fell behind")
    # The write timeout (1 s) and a grace; under system-wide TCP memory pressure (another
    # test's flood) its kernel may drop what it cannot hold, which looks like a lossy link
    # and is excused for lifecycle._LOSS_GRACE_S (30 s) at most.
    closed = c.logged(f"client {lag_id} closed as a slow consumer", timeout=40)
    assert time.monotonic() - start < 60
    skipped = int(closed.split(" after ")[1].split()[0])
    assert skipped > 0
    assert reader.line() == b"* client %d left (slow_consumer)" % lag_id
    # The non-reader's side: what the kernel held for it, then a reset (an abort, not a FIN).
    lagger.sock.settimeout(10)
    taken = 0
    with pytest.raises(ConnectionResetError):
        while True:
            data = lagger.sock.recv(1 << 20)
            assert data, "a clean EOF: the slow consumer was closed, not aborted"
            taken += len(data)
    assert taken < len(want)
    flooder.sock.sendall(b"still here\n")  # the room goes on
    assert reader.line() == prefix + b"still here"
    for client in (reader, flooder, lagger):
        client.sock.close()
    assert c.stop() == 0
    summary = c.logged("clients closed as slow consumers")
    assert " 1 clients closed" in summary and "0 deliveries skipped" not in summary


def test_idle_client_is_dropped_and_a_talking_one_stays(chat):
    c = chat("--idle-timeout", "0.6")
    talker = c.join()
    talker.welcome_id()
    idle = c.join()
    idle_id = idle.welcome_id()
    start = time.monotonic()
    for i in range(6):  # 1.2 s in all, never 0.6 s silent
        talker.sock.sendall(b"tick %d\n" % i)
        time.sleep(0.2)
    rest = recv_until_eof(idle.sock, 10)
    assert rest.endswith(b"* you sent nothing for too long, bye\n"), rest
    assert 0.5 < time.monotonic() - start < 5
    c.logged(f"client {idle_id} idle: dropped")
    assert talker.line() == b"* client %d joined" % idle_id
    assert talker.line() == b"* client %d left (idle_timeout)" % idle_id
    talker.sock.sendall(b"still talking\n")  # served: its line reaches a newcomer
    newcomer = c.join()
    newcomer.welcome_id()
    talker.sock.sendall(b"hello newcomer\n")
    assert newcomer.line().endswith(b": hello newcomer")


def test_sigterm_drains_and_exits_zero(chat):
    c = chat()
    a, b = c.join(), c.join()
    a.welcome_id()
    b_id = b.welcome_id()
    a.line()  # b joined
    b.sock.sendall(b"last words\n")
    assert a.line() == b"%d: last words" % b_id
    c.proc.send_signal(signal.SIGTERM)
    recv_until_eof(a.sock, 10)  # the drain closes every client
    recv_until_eof(b.sock, 10)
    start = time.monotonic()
    a.sock.close()  # the server's close lingers until our FIN (or linger_s)
    b.sock.close()
    assert c.proc.wait(10) == 0
    assert time.monotonic() - start < 2
    c.logged("SIGTERM: draining 2 client(s)")
