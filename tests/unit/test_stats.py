"""The stats document, its rates and aggregation, the stats socket and its advertisement."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import Loop, read_stats, serve_stats
from reactor.stats import aggregate, loop_stats
from reactor.service.stats_socket import StatsError, advertised_path
from tests.conftest import ROOT, recv_until_eof, run_echo, wait_for

CONTRACT_KEYS = {"version", "pid", "connections", "accepted", "closed", "chunks", "timers",
                 "iterations", "events", "events_per_s", "lag", "bytes_in", "bytes_out",
                 "rx_bytes", "tx_bytes", "paused_reading", "top", "closed_total"}


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def echo_once(loop, addr, payload=b"hello\n"):
    c = socket.create_connection(addr, timeout=5)
    run_echo(loop, c, payload)
    return c


def test_document_has_the_contract_keys_and_counts(loop):
    lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, idle_timeout_s=60)
    c = echo_once(loop, lst.address)
    doc = loop_stats(loop)
    assert CONTRACT_KEYS <= doc.keys()
    assert doc["connections"] == 1 and doc["accepted"] == 1
    assert doc["bytes_in"] == 6 and doc["bytes_out"] == 6
    assert doc["timers"]["entries"] >= 1  # the idle timer
    assert set(doc["closed"]) >= {"peer_closed", "reset", "idle_timeout", "line_too_long",
                                  "slow_consumer", "server_full", "shutdown"}
    assert doc["chunks"]["chunks_in_use"] == 0
    assert json.loads(json.dumps(doc)) == doc
    c.close()
    wait_for(lambda: loop.connection_count == 0, step=lambda: loop.run_once(0.01))
    doc = loop_stats(loop)
    assert doc["closed"]["peer_closed"] == 1 and doc["closed_total"] == 1
    assert doc["bytes_in"] == 6 and doc["bytes_out"] == 6  # a closed connection's bytes stay


def test_traffic_counts_live_and_closed_connections_but_not_the_stats_socket(loop, tmp_path):
    lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, idle_timeout_s=60)
    path = str(tmp_path / "s.sock")
    serve_stats(loop, path, advertise=False)
    first = echo_once(loop, lst.address, b"one line\n")
    second = echo_once(loop, lst.address, b"two\nlines\n")
    first.close()
    wait_for(lambda: loop.connection_count == 1, step=lambda: loop.run_once(0.01))
    t = run_loop_in_thread(loop)
    try:  # the stats socket's own requests and replies are not traffic, before or after
        for _ in range(3):
            doc = read_stats(path)
            assert doc["bytes_in"] == 9 + 10 and doc["bytes_out"] == 9 + 10
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    second.close()


def test_rates_are_measured_since_the_previous_request(loop):
    from reactor import FakeClock

    clock = FakeClock(10.0)
    lp = Loop(clock=clock)
    try:
        lp.hub.bytes_in = 0
        loop_stats(lp)
        clock.advance(2.0)
        lp.hub.bytes_in = 1000
        lp.hub.events = 50
        doc = loop_stats(lp)
        assert doc["bytes_in_per_s"] == 500.0 and doc["events_per_s"] == 25.0
        clock.advance(0.1)  # too soon: measured from the same mark, not over 0.1 s
        lp.hub.bytes_in = 1100
        assert loop_stats(lp)["bytes_in_per_s"] == pytest.approx(1100 / 2.1, abs=0.1)
    finally:
        lp.close()


def test_aggregate_sums_workers_and_keeps_the_worst_lag():
    a = {"pid": 1, "connections": 2, "accepted": 5, "bytes_in": 10, "closed": {"reset": 1},
         "chunks": {"chunks_in_use": 3}, "timers": {"entries": 2}, "lag": {"p50_s": 0.001,
         "p99_s": 0.01}, "top": [{"peer": "a", "rx_bytes": 5, "tx_bytes": 0}]}
    b = {"pid": 2, "connections": 3, "accepted": 1, "bytes_in": 7, "closed": {"reset": 2,
         "shutdown": 1}, "chunks": {"chunks_in_use": 1}, "timers": {"entries": 5},
         "lag": {"p50_s": 0.002, "p99_s": 0.003}, "top": [{"peer": "b", "rx_bytes": 9,
                                                          "tx_bytes": 1}]}
    t = aggregate([a, b])
    assert t["connections"] == 5 and t["accepted"] == 6 and t["bytes_in"] == 17
    assert t["closed"] == {"reset": 3, "shutdown": 1}
    assert t["chunks"] == {"chunks_in_use": 4} and t["timers"] == {"entries": 7}
    assert t["lag"] == {"p50_s": 0.002, "p99_s": 0.01}
    assert [c["peer"] for c in t["top"]] == ["b", "a"] and t["top"][0]["worker"] == 2


def test_aggregate_sums_the_accept_limit_counters_and_keeps_each_workers_limits():
    a = {"pid": 1, "per_ip_rejections": 2, "accept_pauses": 7,
         "listeners": [{"max_conns_per_ip": 3, "accept_rate": 50.0, "accept_pauses": 7}]}
    b = {"pid": 2, "per_ip_rejections": 1, "accept_pauses": 0,
         "listeners": [{"max_conns_per_ip": 3, "accept_rate": 50.0, "accept_pauses": 0}]}
    t = aggregate([a, b])
    assert t["per_ip_rejections"] == 3 and t["accept_pauses"] == 7
    assert [lst["accept_rate"] for lst in t["listeners"]] == [50.0, 50.0]  # per worker


def run_loop_in_thread(loop):
    import threading

    t = threading.Thread(target=loop.run)
    t.start()
    return t


def test_serve_stats_default_path_is_the_advertised_one(loop):
    lst = serve_stats(loop)
    path = advertised_path(os.getpid())
    assert lst.address == path and os.stat(path).st_mode & 0o777 == 0o600
    t = run_loop_in_thread(loop)
    try:
        assert read_stats(path)["pid"] == os.getpid()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    lst.close()
    assert not os.path.exists(path)


def test_explicit_path_is_advertised_by_symlink_and_cleaned_up(loop, tmp_path):
    path = str(tmp_path / "s.sock")
    lst = serve_stats(loop, path)
    advert = advertised_path(os.getpid())
    assert os.readlink(advert) == path
    lst.close()
    assert not os.path.lexists(advert) and not os.path.exists(path)


def test_a_reader_that_shuts_down_its_side_still_gets_a_late_document(loop, tmp_path):
    """A provider that answers later (as the supervisor does after asking its workers):
    the reader's FIN must not cost it the document."""
    path = str(tmp_path / "s.sock")
    serve_stats(loop, path, advertise=False,
                provider=lambda reply: loop.call_later(0.05, reply, {"version": 1, "late": 1}))
    t = run_loop_in_thread(loop)
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
            c.shutdown(socket.SHUT_WR)
            assert json.loads(recv_until_eof(c, 5)) == {"version": 1, "late": 1}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def test_read_stats_errors_are_one_line(tmp_path):
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(StatsError, match="does not exist"):
        read_stats(missing)
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    with pytest.raises(StatsError, match="stale"):
        read_stats(stale)
    garbage = str(tmp_path / "garbage.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(garbage)
    srv.listen(1)
    import threading

    def answer():
        c, _ = srv.accept()
        c.sendall(b"hello, this is not json\n")
        c.close()

    threading.Thread(target=answer).start()
    with pytest.raises(StatsError, match="did not answer with a stats document") as e:
        read_stats(garbage)
    assert "\n" not in str(e.value)
    srv.close()


def test_a_peer_of_another_uid_is_closed_without_a_byte(loop, tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    import tempfile

    d = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path is not reachable for another uid
    os.chmod(d, 0o755)
    path = os.path.join(d, "s.sock")
    serve_stats(loop, path, advertise=False)
    os.chmod(path, 0o666)  # the file mode would stop them first: we test the uid check
    code = ("import os, socket; os.setuid(65534); s = socket.socket(socket.AF_UNIX); "
            f"s.settimeout(5); s.connect({path!r}); print(len(s.recv(100)))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    wait_for(lambda: proc.poll() is not None, step=lambda: loop.run_once(0.01))
    assert proc.stdout.read().strip() == "0"
    proc.stdout.close()
    loop.close()
    os.rmdir(d)
