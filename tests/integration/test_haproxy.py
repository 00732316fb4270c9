"""line-echo --proxy-protocol behind a real HAProxy (send-proxy and send-proxy-v2), black-box:
the daemon sees each client's own address (clients bind 127.0.0.2 and 127.0.0.3; HAProxy
connects from 127.0.0.1), --max-conns-per-ip applies to it, every byte comes back, and a
connection that bypasses the balancer is refused. HAProxy comes from the distribution:
`make test` installs it when it is missing and it runs as root (tests/README in the Makefile)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from reactor import read_stats
from tests.conftest import recv_exactly, recv_until_eof, wait_for

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def haproxy(tmp_path):
    """``haproxy(backend_port)`` starts HAProxy in the foreground with two TCP frontends in
    front of it, one per PROXY version; returns {"v1": port, "v2": port}."""
    procs: list[subprocess.Popen] = []

    def start(backend: int) -> dict[str, int]:
        ports = {"v1": _free_port(), "v2": _free_port()}
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{ports["v1"]}
    default_backend echo_v1
frontend v2
    bind 127.0.0.1:{ports["v2"]}
    default_backend echo_v2
backend echo_v1
    server le 127.0.0.1:{backend} send-proxy
backend echo_v2
    server le 127.0.0.1:{backend} send-proxy-v2
""")
        assert shutil.which(HAPROXY) or HAPROXY, "haproxy is not installed (make test installs it)"
        p = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        procs.append(p)

        def listening() -> bool:
            """Both ports taken (a bind fails), tested without connecting: a probe would
            reach the daemon through HAProxy and count against the per-address cap."""
            assert p.poll() is None, p.stdout.read().decode() if p.stdout else "haproxy died"
            for port in ports.values():
                with socket.socket() as probe:
                    try:
                        probe.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                    return False
            return True

        wait_for(listening, what="haproxy listening", step=lambda: time.sleep(0.05))
        return ports

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def _client(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_line_echo_behind_haproxy_sees_the_client_and_caps_it(daemon, haproxy, tmp_path,
                                                              version):
    stats = str(tmp_path / "stats.sock")
    d = daemon("--proxy-protocol", "--max-conns-per-ip", "1", "--stats-socket", stats)
    ports = haproxy(d.address[1])
    a = _client(ports[version], "127.0.0.2")
    lines = b"".join(b"through haproxy %d\n" % i for i in range(5000))
    a.sendall(lines)
    assert recv_exactly(a, len(lines)) == lines
    doc = read_stats(stats)
    assert doc["connections"] == 1 and doc["proxy_protocol"]["accepted_total"] == 1
    # The same client again: over its cap, although HAProxy connects from 127.0.0.1 each time.
    b = _client(ports[version], "127.0.0.2")
    assert recv_until_eof(b) == b"ERR too many connections from your address\n"
    # Another client through the same balancer is served.
    c = _client(ports[version], "127.0.0.3")
    c.sendall(b"other client\n")
    assert recv_exactly(c, 13) == b"other client\n"
    doc = read_stats(stats)
    assert doc["per_ip_rejections"] == 1 and doc["connections"] == 2
    assert doc["proxy_protocol"]["rejected"] == {}
    for s in (a, b, c):
        s.close()


def test_the_peer_in_the_stats_and_a_connection_that_bypasses_the_balancer(daemon, haproxy,
                                                                          tmp_path):
    stats = str(tmp_path / "stats.sock")
    d = daemon("--proxy-protocol", "--stats-socket", stats)
    ports = haproxy(d.address[1])
    # A partial line is held by the daemon: the connection shows in `top`, with its address.
    s = _client(ports["v2"], "127.0.0.4")
    s.sendall(b"no newline yet")
    peers = wait_for(lambda: [c["peer"] for c in read_stats(stats)["top"]],
                     what="the connection in top", step=lambda: time.sleep(0.05))
    assert peers[0].startswith("127.0.0.4:") and peers[0] == "127.0.0.4:%d" % s.getsockname()[1]
    # Straight to the daemon, no header: refused with a reset, counted, never echoed.
    direct = socket.create_connection(d.address, timeout=10)
    direct.sendall(b"hello\n")
    with pytest.raises(ConnectionResetError):
        while direct.recv(100):
            pass
    doc = wait_for(lambda: (lambda x: x if x["proxy_protocol"]["rejected"] else None)(
        read_stats(stats)), what="the refusal counted", step=lambda: time.sleep(0.05))
    assert doc["proxy_protocol"]["rejected"] == {"not_proxy": 1}
    assert doc["closed"]["proxy_protocol"] == 1
    s.close()
    direct.close()
