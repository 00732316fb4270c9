"""docs/examples/rpc.py, black-box: the server as a subprocess, driven by the example's own
client mode and by raw sockets. Pipelined requests whose jobs finish out of order are
answered in request order with the right results; a failed or timed-out connect says so; a
frame over the cap gets one error reply and the close; SIGTERM finishes the jobs it holds."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial

from tests.conftest import ROOT, recv_exactly, recv_until_eof
from tests.integration.example_proc import EXAMPLES, Example, example_fixture

RPC = EXAMPLES / "rpc.py"

rpc = example_fixture(partial(Example, "rpc.py"))


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def request(rounds: int, data: bytes) -> bytes:
    return frame(rounds.to_bytes(4, "big") + data)


def result(rounds: int, data: bytes) -> bytes:
    return frame(b"\x00" + hashlib.sha256(data * rounds).digest())


def error(message: bytes) -> bytes:
    return frame(b"\x01" + message)


BAD_REQUEST = error(b"bad request: need rounds >= 1, at most 2**28 bytes of work")


def client(*args: str | int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RPC), "client", *map(str, args)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_help_and_the_examples_own_client(rpc):
    assert "--connect-timeout" in client("--help").stdout
    r = rpc()
    done = client("--port", r.address[1], "--requests", 300, "--slow-rounds", 500)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("300 replies, in order, all correct, in ")


def test_pipelined_slow_and_fast_requests_are_answered_in_request_order(rpc):
    r = rpc("--threads", "4", "--max-inflight", "16")
    wire, want = bytearray(), bytearray()
    for i in range(400):
        data = b"payload %d " % i * 300  # over 2 KiB: hashlib works without the GIL
        if i % 97 == 50:  # bad requests take their turn too: an error in their slot
            wire += frame(b"\x00\x00") if i % 2 else request(0, data)
            want += BAD_REQUEST
            continue
        rounds = 3000 if i % 10 == 0 else 1  # slow ones first in each ten: fast ones overtake
        wire += request(rounds, data)
        want += result(rounds, data)
    with r.connect() as s:
        sender = threading.Thread(target=s.sendall, args=(bytes(wire),), daemon=True)
        sender.start()
        got = recv_exactly(s, len(want), 30)
        sender.join(10)
    assert got == bytes(want)
    assert r.stop() == 0
    summary = r.logged("finished out of order")
    reordered = int(summary.split("; ")[1].split()[0])
    assert reordered > 0, summary  # the pool did finish them out of order


def test_half_close_gets_every_reply_then_the_close(rpc):
    r = rpc()
    reqs = [(2000 if i == 0 else 1, b"half close %d " % i * 200) for i in range(20)]
    with r.connect() as s:
        s.sendall(b"".join(request(n, d) for n, d in reqs))
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s, 10) == b"".join(result(n, d) for n, d in reqs)


def test_connect_refused_and_connect_timeout_are_clear_errors():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    done = client("--port", closed_port)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: cannot connect to 127.0.0.1:{closed_port}: "
                                   "[Errno 111] Connection refused")
    # A listener whose accept queue is full and never served: the kernel drops further SYNs,
    # so a connect neither succeeds nor fails (as behind a firewall that drops packets).
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    try:
        start = time.monotonic()
        done = client("--port", port, "--connect-timeout", "0.5")
        elapsed = time.monotonic() - start
    finally:
        for f in fillers:
            f.close()
        full.close()
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot connect to 127.0.0.1:{port}: connect timed out"
    assert 0.45 < elapsed < 5


def test_a_frame_over_the_cap_gets_one_error_reply_then_the_close(rpc):
    r = rpc("--max-frame", "1024")
    with r.connect() as s:
        at_cap = b"y" * 1020  # 4 bytes of rounds + 1020: exactly the cap
        s.sendall(request(3, at_cap))
        assert recv_exactly(s, 37) == result(3, at_cap)
        s.sendall((1025).to_bytes(4, "big") + b"z" * 100)  # refused from its header alone
        assert recv_until_eof(s, 10) == error(b"frame of 1025 bytes exceeds max_frame_bytes 1024")
    with r.connect() as s:  # the server goes on
        s.sendall(request(1, b"after"))
        assert recv_exactly(s, 37) == result(1, b"after")


def test_sigterm_finishes_the_jobs_in_hand_and_refuses_the_rest(rpc):
    r = rpc("--threads", "1")
    slow = [(25_000, b"slow %d " % i * 600) for i in range(4)]  # ~100 MB of hashing each
    busy, barrier = r.connect(), r.connect()
    busy.sendall(b"".join(request(n, d) for n, d in slow))
    # A bad request is answered by the loop itself, without the pool: once its reply is
    # here, the loop has read what the other connection sent before it.
    barrier.sendall(request(0, b"x"))
    assert recv_exactly(barrier, len(BAD_REQUEST)) == BAD_REQUEST
    r.proc.send_signal(signal.SIGTERM)
    line = r.logged("SIGTERM: finishing ")
    assert int(line.split("finishing ")[1].split()[0]) >= 1, line  # some were still in the pool
    busy.sendall(request(1, b"too late"))  # arrives while the server stops: refused, in order
    got = recv_until_eof(busy, 15)
    assert got == b"".join(result(n, d) for n, d in slow) + error(b"shutting down")
    assert recv_until_eof(barrier, 5) == b""
    busy.close()
    barrier.close()
    assert r.proc.wait(10) == 0
    r.logged("answered 6 requests")
