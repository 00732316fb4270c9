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

from tests.conftest import recv_until_eof, wait_for
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
    stop = threading.Event()

    def read_all() -> None:  # the reader reads whatever comes until told to stop
        reader.sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data = reader.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            got.extend(data)

    t = threading.Thread(target=read_all, daemon=True)
    t.start()
    start = time.monotonic()
    flooder.sock.sendall(flood)
    wait_for(lambda: len(got) >= len(want), 20, f"the flood at the reader ({len(got)} bytes)",
             step=lambda: time.sleep(0.01))
    assert bytes(got[:len(want)]) == want  # every line, in order, byte for byte
    c.logged(f"client {lag_id} fell behind")

    # The room goes on, as rooms do: a member that reads nothing is over its watermark again
    # with the next lines (if its kernel took the flood's tail meanwhile, it "caught up") and
    # is closed after the write timeout (1 s) and a grace. Under system-wide TCP memory
    # pressure (another test's flood) its kernel may drop what it cannot hold, which looks like
    # a lossy link and is excused for lifecycle._LOSS_GRACE_S (30 s) at most.
    closing = f"client {lag_id} closed as a slow consumer"
    more = bytearray()
    while not any(closing in line for line in c.log):
        assert time.monotonic() - start < 60, f"not closed; the log: {c.log[-5:]}"
        burst = b"".join(b"more line %08d %s\n" % (len(more) // 64 + i, b"y" * 43)
                         for i in range(100))
        flooder.sock.sendall(burst)
        more += burst
        time.sleep(0.05)  # pacing the room's talk, not waiting on anything
    closed = c.logged(closing)
    skipped = int(closed.split(" after ")[1].split()[0])
    assert skipped > 0
    left = b"* client %d left (slow_consumer)\n" % lag_id
    tail = b"".join(prefix + ln + b"\n" for ln in bytes(more).splitlines())
    wait_for(lambda: len(got) >= len(want) + len(tail) + len(left), 20, "the room's talk",
             step=lambda: time.sleep(0.01))
    stop.set()
    t.join(5)
    rest = bytes(got[len(want):])
    assert rest.count(left) == 1  # the notice, once, between two of the room's lines
    assert rest.replace(left, b"", 1) == tail
    reader.buf = b""
    # The non-reader's side: what the kernel held for it, then a reset (an abort, not a FIN).
    lagger.sock.settimeout(10)
    taken = 0
    with pytest.raises(ConnectionResetError):
        while True:
            data = lagger.sock.recv(1 << 20)
            assert data, "a clean EOF: the slow consumer was closed, not aborted"
            taken += len(data)
    assert taken < len(want) + len(tail)
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
