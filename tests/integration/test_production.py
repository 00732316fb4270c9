"""line-echo as production runs it, black-box: started the way systemd starts it (a listening
socket inherited as fd 3, NOTIFY_SOCKET, WATCHDOG_USEC) and scraped by Prometheus
(--metrics HOST:PORT, parsed with prometheus_client's own parser)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LINE_ECHO, ROOT, recv_exactly, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, list]:
    proxy_free = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with proxy_free.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_single_process(daemon):
    port = _free_port()
    d = daemon("--metrics", f"127.0.0.1:{port}")
    held = [d.connect() for _ in range(3)]
    for s in held:
        s.sendall(b"hi\n")
        assert recv_exactly(s, 3) == b"hi\n"
    fams = wait_for(lambda: (lambda f: f if _value(f["reactor_connections"]) == 3 else None)(
        _scrape(port)), what="three connections in the metrics", step=lambda: time.sleep(0.05))
    assert _value(fams["reactor_accepted"]) == 3  # the parser drops a counter's _total
    # The service's bytes only: no scrape's, neither earlier ones' nor this one's request.
    assert _value(fams["reactor_bytes_out"]) == 9
    assert _value(fams["reactor_bytes_in"]) == 9
    assert _value(fams["reactor_closed"], reason="peer_closed") == 0
    held[0].close()
    wait_for(lambda: _value(_scrape(port)["reactor_closed"], reason="peer_closed") == 1,
             what="the close counted", step=lambda: time.sleep(0.05))
    for s in held[1:]:
        s.close()


def test_metrics_of_every_worker_under_its_label(daemon):
    port = _free_port()
    d = daemon("--workers", "2", "--metrics", f"127.0.0.1:{port}")
    held = [d.connect() for _ in range(8)]
    for s in held:
        s.sendall(b"w\n")
        assert recv_exactly(s, 2) == b"w\n"

    def both_answer():
        fams = _scrape(port)
        workers = {s.labels["worker"] for s in fams["reactor_connections"]}
        total = _value(fams["reactor_connections"])
        return fams if workers == {"0", "1"} and total == 8 else None

    fams = wait_for(both_answer, what="two workers' figures", step=lambda: time.sleep(0.1))
    assert _value(fams["reactor_workers_answered"]) == 2
    for s in held:
        s.close()


def test_bad_metrics_address_exits_1(daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*LINE_ECHO, "--port", "0", "--metrics", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1 and "line-echo: " in r.stderr


class Notify:
    """A NOTIFY_SOCKET: collects the datagrams the daemon sends."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path
        self.got: list[str] = []

    def until(self, word: str, timeout: float = 10.0) -> list[str]:
        def seen():
            while select.select([self.sock], [], [], 0)[0]:
                self.got.append(self.sock.recv(4096).decode())
            return [m for m in self.got if word in m.split("\n")]
        return wait_for(seen, timeout, f"{word} on NOTIFY_SOCKET", step=lambda: time.sleep(0.02))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_started_the_way_systemd_starts_it(tmp_path, workers):
    """An inherited listening socket at fd 3 (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), and
    NOTIFY_SOCKET with WATCHDOG_USEC: READY=1 once it serves, the echo on the inherited
    port (no bind of its own: --port would be busy), WATCHDOG=1 pings, STOPPING=1 at
    SIGTERM, exit 0."""
    notify = Notify(str(tmp_path / "notify.sock"))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    fd = lsock.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, 3)

    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000",
           "LISTEN_FDS": "1", "LISTEN_FDNAMES": "line-echo"}
    # LISTEN_PID must be the daemon's own pid: the shell's, which exec keeps.
    cmd = ["/bin/sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *LINE_ECHO, "--workers", workers,
           "--port", str(port), "--no-stats-socket"]
    # fds are closed after preexec_fn runs: 3 must be among those kept.
    p = subprocess.Popen(cmd, env=env, pass_fds=(fd, 3), preexec_fn=as_fd_3, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().decode().strip() == f"listening on 127.0.0.1:{port}"
        ready = notify.until("READY=1")
        assert any(line.startswith("STATUS=") for line in ready[0].split("\n"))
        lsock.close()  # only the daemon holds the socket now
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"activated\n")
            assert recv_exactly(s, 10) == b"activated\n"
        assert len(notify.until("WATCHDOG=1")) >= 1  # every 0.2 s: half of WATCHDOG_USEC
        p.send_signal(signal.SIGTERM)
        notify.until("STOPPING=1")
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        notify.sock.close()
