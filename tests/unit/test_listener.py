"""The accept path under fd exhaustion, in both selector modes, in a subprocess whose
RLIMIT_NOFILE is tiny; and the spare-fd reservation on its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from reactor.listener import FdReserve
from tests.conftest import ROOT, connect_many_expect_refusals, cpu_ticks, recv_exactly

SERVER = """
import resource, sys
from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import Loop
loop = Loop(selector=sys.argv[1], raise_fd_limit=False)
resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, max_conns=1000,
                  reject_message=b"ERR server full\\n")
loop.add_signal_handler(15, loop.stop)
print(lst.address[1], flush=True)
loop.run()
"""


@pytest.mark.parametrize("mode", ["edge", "level"])
def test_emfile_refuses_excess_without_spinning_then_recovers(mode):
    proc = subprocess.Popen([sys.executable, "-c", SERVER, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        port = int(proc.stdout.readline())
        held, refused = connect_many_expect_refusals(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=10), 40)
        assert refused >= 20 and len(held) >= 5
        before = cpu_ticks(proc.pid)
        time.sleep(1.0)
        assert cpu_ticks(proc.pid) - before < 30  # idle at the limit: no spin
        for s in held[:3]:
            s.close()
        time.sleep(0.3)  # the retry timer (100 ms) resumes accepting
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"after\n")
            assert recv_exactly(s, 6) == b"after\n"
        for s in held[3:]:
            s.sendall(b"still\n")
            assert recv_exactly(s, 6) == b"still\n"
            s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0, err
    assert err.count("out of file descriptors") == 1  # rate-limited to one warning


def test_fd_reserve_releases_and_reacquires():
    opened = []

    def opener():
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        return fd

    r = FdReserve(opener)
    assert r.held and len(opened) == 1
    assert r.release() is True and not r.held
    assert r.release() is False
    assert r.reacquire() is True and r.held and len(opened) == 2

    def failing():
        raise OSError(24, "Too many open files")

    r.close()
    r2 = FdReserve(failing)
    assert not r2.held and r2.reacquire() is False
