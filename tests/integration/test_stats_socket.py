"""The daemon's stats socket under abuse: readers that never read, garbage, a thousand at
once, a user of another uid. None may stall the loop: while each goes on, a bystander
keeps getting its echoes (every byte checked), and afterwards the daemon's fd count is
back where it was."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from reactor import read_stats
from tests.conftest import ROOT, EchoProber, recv_until_eof, wait_for


class Watched:
    """A line-echo daemon with ``--stats-socket path`` (and ``--workers N``: then the
    socket is the supervisor's), a bystander echoing through it, and the daemon's fd
    count at rest."""

    def __init__(self, daemon, path: str, workers: int) -> None:
        self.path = path
        self.workers = workers
        self.d = daemon("--stats-socket", path, "--workers", str(workers))
        self.prober = EchoProber(self.d.connect(), b"bystander")
        self.prober.wait_rounds(3)
        self.baseline = self.d.fd_count()

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        return s

    def document(self, s: socket.socket) -> dict:
        """The whole reply on ``s``: one stats document of this daemon's loop."""
        doc = json.loads(recv_until_eof(s))
        assert doc["version"] == 1 and doc["pid"] == self.d.pid
        assert doc["connections"] == 1  # the bystander; stats readers do not count
        if self.workers > 1:
            assert doc["role"] == "supervisor" and len(doc["workers"]) == self.workers
            assert not [w for w in doc["workers"] if "error" in w], doc["workers"]
        else:
            assert doc["role"] == "worker"
        return doc

    def settled(self) -> None:
        """Every abuser is gone from the daemon, and the bystander was served throughout."""
        wait_for(lambda: self.d.fd_count() == self.baseline, what="the fd count at rest")
        assert self.prober.stop() > 3
        self.prober.sock.close()


@pytest.fixture(params=[1, 2], ids=["one-worker", "supervisor"])
def workers(request) -> int:
    return request.param


@pytest.fixture
def watched(daemon, tmp_path, workers) -> Watched:
    return Watched(daemon, str(tmp_path / "stats.sock"), workers)


def test_readers_that_never_read_are_closed_by_the_daemon(watched):
    w = watched
    start = time.monotonic()
    silent = [w.connect() for _ in range(100)]
    asking = [w.connect() for _ in range(100)]
    for s in asking:
        s.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
    # While all 200 still hold their ends, the daemon wrote each its document and, after
    # the linger, closed its side: it holds nothing for them.
    wait_for(lambda: w.d.fd_count() == w.baseline, what="the daemon closing all 200")
    w.prober.assert_answered_throughout(start, time.monotonic())
    for s in silent + asking:  # their documents waited for them, whole
        w.document(s)
        s.close()
    w.settled()


def test_garbage_is_ignored_and_an_endless_stream_of_it_is_cut(watched):
    """A reader may send anything and shut down its side: its document comes whole (the
    supervisor, which gathers its workers' documents first, used to drop such a reader)."""
    w = watched
    garbage = random.Random(5).randbytes(256 << 10)
    start = time.monotonic()
    with w.connect() as s:  # garbage, then our FIN: the document comes all the same
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        w.document(s)
    endless = w.connect()
    cut: list[BaseException] = []

    def stream() -> None:
        try:
            while True:
                endless.sendall(garbage)
        except OSError as exc:
            cut.append(exc)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    t.join(10)
    assert cut and isinstance(cut[0], (BrokenPipeError, ConnectionResetError)), cut
    w.prober.assert_answered_throughout(start, time.monotonic())
    endless.close()
    w.settled()


def test_a_thousand_concurrent_readers_each_get_a_whole_document(watched):
    w = watched
    per_thread, nthreads = 20, 50
    all_connected = threading.Barrier(nthreads + 1, timeout=30)
    docs: list[dict] = []
    errors: list[BaseException] = []

    def readers() -> None:
        try:
            socks = [w.connect() for _ in range(per_thread)]
            all_connected.wait()
            for s in socks:
                docs.append(w.document(s))
                s.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            all_connected.abort()

    start = time.monotonic()
    threads = [threading.Thread(target=readers, daemon=True) for _ in range(nthreads)]
    for t in threads:
        t.start()
    all_connected.wait()  # 1,000 stats connections open at once
    w.prober.wait_rounds(3)
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert len(docs) == per_thread * nthreads
    w.prober.assert_answered_throughout(start, time.monotonic())
    w.settled()


FOREIGN_READER = """
import json, os, socket, sys
os.setgid(65534)
os.setuid(65534)
out = []
for i in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])  # the file mode lets us in: only the daemon's check is left
    got, end = b"", "eof"
    try:
        if i % 2:
            s.sendall(b"GET /stats\\n")
        while data := s.recv(65536):
            got += data
    except (BrokenPipeError, ConnectionResetError):
        end = "reset"
    out.append([len(got), end])
    s.close()
print(json.dumps(out))
"""


def test_a_reader_of_another_uid_is_refused_by_its_credentials(daemon, workers):
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    where = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path is not reachable for another uid
    try:
        os.chmod(where, 0o755)
        w = Watched(daemon, os.path.join(where, "stats.sock"), workers)
        os.chmod(w.path, 0o666)  # so that only the daemon's SO_PEERCRED check stands in the way
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-c", FOREIGN_READER, w.path], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        results = json.loads(r.stdout)
        assert len(results) == 20 and all(n == 0 for n, _ in results), results  # not a byte
        w.prober.assert_answered_throughout(start, time.monotonic())
        assert read_stats(w.path)["pid"] == w.d.pid  # our own uid is served meanwhile
        w.settled()
    finally:
        shutil.rmtree(where, ignore_errors=True)
