"""The line-echo daemon, black-box: its whole contract, point by point, over real sockets."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import (LINE_ECHO, ROOT, connect_many_expect_refusals, cpu_ticks, echo_each,
                            echo_ok, recv_exactly, recv_until_eof, rss_bytes, tls_exchange,
                            wait_for)

CERTS = os.path.join(os.path.dirname(__file__), "..", "certs")


def test_listening_line_and_default_address(daemon):
    d = daemon()
    assert d.first_line.startswith("listening on 127.0.0.1:")
    assert d.address[1] > 0
    echo_ok(d)


def test_lines_are_echoed_byte_for_byte_including_cr_nul_and_invalid_utf8(daemon):
    d = daemon()
    with d.connect() as s:
        payload = b"plain\ncrlf\r\n\x00nul\x00\n\xff\xfe\xc3(\n\r\n\n"
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload


def test_partial_lines_across_sends_and_many_lines_per_send(daemon):
    d = daemon()
    with d.connect() as s:
        s.sendall(b"hel")
        time.sleep(0.05)  # let the server see the partial line on its own
        s.sendall(b"lo\nwor")
        assert recv_exactly(s, 6) == b"hello\n"
        s.sendall(b"ld\n" + b"".join(b"%d\n" % i for i in range(1000)))
        want = b"world\n" + b"".join(b"%d\n" % i for i in range(1000))
        assert recv_exactly(s, len(want)) == want


def test_pipelined_megabyte_in_one_send(daemon):
    d = daemon()
    with d.connect() as s:
        payload = b"".join(b"pipelined line %08d\n" % i for i in range(50000))
        assert len(payload) >= 1 << 20
        got = bytearray()
        t = threading.Thread(target=lambda: got.extend(recv_exactly(s, len(payload), 60)))
        t.start()
        s.sendall(payload)
        t.join(60)
        assert bytes(got) == payload


def test_max_line_exact_boundary_and_error(daemon):
    d = daemon("--max-line", "100")
    with d.connect() as s:
        ok = b"a" * 99 + b"\n"  # exactly 100 bytes with the newline: accepted
        s.sendall(ok)
        assert recv_exactly(s, 100) == ok
    with d.connect() as s:
        s.sendall(b"before\n" + b"b" * 100 + b"\n")  # 101 bytes: refused
        assert recv_until_eof(s) == b"before\nERR line too long\n"
    echo_ok(d)


def test_oversized_line_without_newline_is_refused_with_bounded_memory(daemon):
    d = daemon()
    with d.connect() as s:
        blob = b"q" * (10 * 1024 * 1024)
        out = bytearray()
        reader = threading.Thread(target=lambda: out.extend(recv_until_eof(s, 30)))
        reader.start()
        try:
            s.sendall(b"first\n" + blob)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before all 10 MiB went out
        reader.join(30)
        assert bytes(out) == b"first\nERR line too long\n"
    echo_ok(d)


def test_half_close_echoes_lines_then_partial_then_closes(daemon):
    d = daemon()
    with d.connect() as s:
        s.sendall(b"one\ntwo\npartial")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b"one\ntwo\npartial"


def test_idle_timeout_closes_a_silent_connection(daemon):
    d = daemon("--idle-timeout", "0.5")
    with d.connect() as s:
        start = time.monotonic()
        s.sendall(b"hi\n")
        assert recv_until_eof(s, 10) == b"hi\n"
        assert 0.4 < time.monotonic() - start < 5


def test_idle_timeout_zero_is_off_and_busy_connections_stay(daemon):
    d = daemon("--idle-timeout", "0.6")
    with d.connect() as s:
        for i in range(8):  # 1.6 s in all, but never 0.6 s silent
            s.sendall(b"%d\n" % i)
            assert recv_exactly(s, 2) == b"%d\n" % i
            time.sleep(0.2)
    d2 = daemon("--idle-timeout", "0")
    with d2.connect() as s:
        time.sleep(1.0)
        s.sendall(b"still\n")
        assert recv_exactly(s, 6) == b"still\n"


def test_heartbeat_sends_ping_when_nothing_was_sent(daemon):
    d = daemon("--heartbeat", "0.3")
    with d.connect() as s:
        start = time.monotonic()
        assert recv_exactly(s, 5) == b"PING\n"
        assert time.monotonic() - start >= 0.25
        s.sendall(b"x\n")
        assert recv_exactly(s, 2) == b"x\n"
        assert recv_exactly(s, 5) == b"PING\n"


def test_connection_cap_refuses_with_server_full_and_keeps_serving(daemon):
    d = daemon("--max-conns", "3")
    held = [d.connect() for _ in range(3)]
    for s in held:
        s.sendall(b"in\n")
        assert recv_exactly(s, 3) == b"in\n"
    fds = d.fd_count()
    for _ in range(5):
        with d.connect() as extra:
            assert recv_until_eof(extra) == b"ERR server full\n"
    wait_for(lambda: d.fd_count() == fds, what="no fd leaked by refusals")
    held[0].close()
    wait_for(lambda: d.fd_count() == fds - 1, what="slot freed")
    echo_ok(d)
    for s in held[1:]:
        s.sendall(b"still\n")
        assert recv_exactly(s, 6) == b"still\n"
        s.close()


def connect_from(d, host: str) -> socket.socket:
    """A client from ``host`` (any 127.x.y.z is loopback: another address to the daemon)."""
    return socket.create_connection(d.address, timeout=10, source_address=(host, 0))


def test_max_conns_per_ip_refuses_the_extra_one_from_that_address_only(daemon, tmp_path):
    from reactor import read_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--max-conns-per-ip", "3", "--stats-socket", path)
    first = [connect_from(d, "127.0.0.1") for _ in range(3)]
    echo_each(first, b"first")
    with connect_from(d, "127.0.0.1") as extra:
        assert recv_until_eof(extra) == b"ERR too many connections from your address\n"
    others = [connect_from(d, "127.0.0.2") for _ in range(3)] + [connect_from(d, "127.0.0.3")]
    echo_each(others, b"other")
    echo_each(first, b"still", lines=500)
    doc = read_stats(path)
    assert doc["per_ip_rejections"] == 1 and doc["closed"]["per_ip_limit"] == 1
    assert doc["listeners"][0]["max_conns_per_ip"] == 3 and doc["connections"] == 7
    first[0].close()
    wait_for(lambda: read_stats(path)["connections"] == 6, what="the closed one's slot freed")
    with connect_from(d, "127.0.0.1") as again:
        echo_each([again], b"again")
    echo_each(first[1:] + others, b"after")
    assert read_stats(path)["per_ip_rejections"] == 1
    for s in first[1:] + others:
        s.close()


def test_server_full_wins_when_both_caps_are_hit(daemon):
    d = daemon("--max-conns", "3", "--max-conns-per-ip", "3")
    held = [connect_from(d, "127.0.0.1") for _ in range(3)]
    echo_each(held, b"held")
    for host in ("127.0.0.1", "127.0.0.2"):  # both caps hit, then only --max-conns
        with connect_from(d, host) as extra:
            assert recv_until_eof(extra) == b"ERR server full\n"
    echo_each(held, b"still")
    for s in held:
        s.close()


def test_accept_rate_paces_a_burst_from_the_backlog_and_refuses_nothing(daemon, tmp_path):
    from reactor import read_stats
    from tests.integration.test_fd_stats import fd_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--accept-rate", "50", "--stats-socket", path)
    start = time.monotonic()
    socks = [d.connect() for _ in range(200)]  # the kernel's backlog completes every handshake
    lines = [b"burst %d\n" % i for i in range(200)]
    for s, line in zip(socks, lines):
        s.sendall(line)

    def all_accepted() -> bool:
        doc = read_stats(path)  # the bucket starts full (50), then 50 a second
        assert doc["accepted"] <= 50 + 50 * (time.monotonic() - start) + 1, doc["accepted"]
        return doc["accepted"] == 200

    wait_for(all_accepted, timeout=20, what="all 200 accepted", step=lambda: time.sleep(0.05))
    elapsed = time.monotonic() - start
    assert (200 - 50) / 50 - 0.05 <= elapsed < 3 * (200 - 50) / 50, elapsed
    for s, line in zip(socks, lines):
        assert recv_exactly(s, len(line)) == line
    doc = read_stats(path)
    assert doc["accept_pauses"] > 0 and doc["listeners"][0]["accept_rate"] == 50
    assert doc["listeners"][0]["rejected"] == 0 and doc["closed_total"] == 0
    r = fd_stats(str(d.pid), "--json", "--stats-socket", path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reactor"]["accept_pauses"] >= doc["accept_pauses"] > 0
    human = fd_stats(str(d.pid), "--stats-socket", path).stdout
    assert "accept rate 50/s  accept_pauses" in human and "per ip off" in human
    for s in socks:
        s.close()


def test_thousand_connections_round_trip(daemon):
    d = daemon()
    socks = [d.connect() for _ in range(1000)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"conn %d\n" % i)
        for i, s in enumerate(socks):
            assert recv_exactly(s, len(b"conn %d\n" % i)) == b"conn %d\n" % i
        wait_for(lambda: d.fd_count() >= 1000, what="server holds 1000 fds")
    finally:
        for s in socks:
            s.close()


def test_slow_reader_backpressure_keeps_memory_flat_and_loses_nothing(daemon, tmp_path):
    from reactor import read_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--stats-socket", path)
    echo_ok(d)
    rss_before = rss_bytes(d.pid)
    with d.connect() as s:
        payload = b"".join(b"slow reader %07d\n" % i for i in range(1_000_000))  # 20 MB
        writer = threading.Thread(target=s.sendall, args=(payload,))
        writer.start()
        # The client reads nothing: the server must stop reading, not buffer 20 MB.
        wait_for(lambda: read_stats(path)["paused_reading"] == 1, what="server paused")
        doc = read_stats(path)
        assert doc["tx_bytes"] + doc["rx_bytes"] < 1 << 20
        assert rss_bytes(d.pid) - rss_before < 16 << 20
        got = recv_exactly(s, len(payload), 120)
        writer.join(10)
        assert got == payload


def test_sigterm_drains_every_complete_line_then_exits_zero(daemon):
    d = daemon("--drain-timeout", "10")
    clients = [d.connect() for _ in range(20)]
    payloads = [b"".join(b"c%d line %d\n" % (i, n) for n in range(2000)) + b"unfinished"
                for i in range(20)]
    for s, p in zip(clients, payloads):
        s.sendall(p)
    for s, p in zip(clients, payloads):  # the kernel has them all: wait for the first echo
        s.settimeout(10)
        assert s.recv(1) == p[:1]
    d.signal(signal.SIGTERM)
    for s, p in zip(clients, payloads):
        want = p[1:p.rindex(b"\n") + 1]
        got = recv_until_eof(s, 20)
        assert got == want
    assert d.wait(20) == 0


def test_sigterm_with_a_peer_that_never_reads_ends_at_drain_timeout(daemon):
    d = daemon("--drain-timeout", "1")
    s = d.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    blob = b"z" * 1000 + b"\n"
    sent = 0
    deadline = time.monotonic() + 10
    # 2 MB: far more than the peer's 4 KiB receive buffer lets the server send, and less
    # than --max-send-buffer (4 MiB), so the drain (which reads everything queued at the
    # signal) cannot end early by aborting a slow consumer: only the timeout ends it.
    while sent < 2_000_000 and time.monotonic() < deadline:
        try:
            sent += s.send((blob * 64)[:2_000_000 - sent])
        except BlockingIOError:
            time.sleep(0.05)
    start = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
    assert time.monotonic() - start < 8
    assert "drain timeout" in d.stderr_text()
    s.close()


def test_second_signal_exits_at_once(daemon):
    d = daemon("--drain-timeout", "30")
    s = d.connect()
    s.setblocking(False)
    blob = b"w" * 1000 + b"\n"
    for _ in range(2000):  # a peer that does not read holds the drain open
        try:
            s.send(blob * 64)
        except BlockingIOError:
            break
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    start = time.monotonic()
    d.signal(signal.SIGINT)
    assert d.wait(10) == 0
    assert time.monotonic() - start < 5
    s.close()


def test_sigint_drains_like_sigterm(daemon):
    d = daemon()
    with d.connect() as s:
        s.sendall(b"x\n")
        assert recv_exactly(s, 2) == b"x\n"
        d.signal(signal.SIGINT)
        assert recv_until_eof(s) == b""
    assert d.wait(20) == 0


def test_unix_socket(daemon, tmp_path):
    path = str(tmp_path / "echo.sock")
    d = daemon("--unix", path)
    assert d.first_line.strip() == f"listening on unix:{path}"
    echo_ok(d, b"over unix\n")


def test_stats_socket_answers_json_with_mode_0600(daemon, tmp_path):
    from reactor import read_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--stats-socket", path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with d.connect() as s:
        s.sendall(b"hello\n")
        assert recv_exactly(s, 6) == b"hello\n"
        doc = read_stats(path)
        assert doc["version"] == 1 and doc["pid"] == d.pid
        assert doc["connections"] == 1 and doc["accepted"] == 1
        assert doc["bytes_in"] == 6 and doc["bytes_out"] == 6
        assert doc["edge_triggered"] is True
        assert doc["chunks"]["chunks_in_use"] == 0
        assert doc["per_ip_rejections"] == doc["accept_pauses"] == 0  # both limits default off
        assert doc["listeners"][0]["max_conns_per_ip"] == doc["listeners"][0]["accept_rate"] == 0


@pytest.mark.parametrize("args, needle", [
    (["--port", "abc"], "--port"),
    (["--port", "70000"], "--port"),
    (["--workers", "0"], "--workers"),
    (["--max-line", "-1"], "--max-line"),
    (["--idle-timeout", "soon"], "--idle-timeout"),
    (["--log-level", "loud"], "--log-level"),
    (["--max-conns-per-ip", "-1"], "--max-conns-per-ip"),
    (["--max-conns-per-ip", "three"], "--max-conns-per-ip"),
    (["--accept-rate", "-50"], "--accept-rate"),
    (["--accept-rate", "fast"], "--accept-rate"),
    (["--timer-grain", "-0.01"], "--timer-grain"),
    (["--timer-grain", "1e300"], "--timer-grain"),  # connection timers that never fire
    (["--bogus"], "--bogus"),
    (["--tls-key", "k.pem"], "need --tls-cert"),
    (["--tls-cert", "/nonexistent.pem"], "cannot load the TLS certificate"),
    (["--tls-cert", os.path.join(CERTS, "server.pem"), "--tls-key",
      os.path.join(CERTS, "client.key")], "KEY_VALUES_MISMATCH"),
    (["--tls-cert", os.path.join(CERTS, "server.pem"), "--tls-verify-client"], "--tls-ca"),
    (["--tls-handshake-timeout", "0"], "--tls-handshake-timeout"),
])
def test_bad_arguments_exit_2_with_one_line(args, needle):
    r = subprocess.run([*LINE_ECHO, *args], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("line-echo: error:")
    assert r.stdout == ""


def _tls_client(address, **kw):
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    if kw:
        ctx.load_cert_chain(kw["cert"], kw["key"])
    raw = socket.create_connection(address, timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_tls_echo_and_a_plaintext_client_refused(daemon, tmp_path):
    """--tls-cert/--tls-key: the same echo contract over TLS (every byte of 1 MiB of lines,
    CRs kept); a plaintext client gets no echo and is closed, counted in the stats document
    with the reason OpenSSL gave, and logged in one line."""
    from reactor import read_stats

    stats = str(tmp_path / "stats.sock")
    d = daemon("--tls-cert", os.path.join(CERTS, "server.pem"),
               "--tls-key", os.path.join(CERTS, "server.key"), "--stats-socket", stats)
    payload = b"".join(b"tls %07d\r\n" % i for i in range(80000))
    with _tls_client(d.address) as s:
        got = tls_exchange(s, payload, len(payload))
    assert got == payload
    with socket.create_connection(d.address, timeout=10) as plain:
        plain.sendall(b"hello\n")
        assert b"hello" not in recv_until_eof(plain)
    doc = wait_for(lambda: (lambda s: s if s["closed"]["tls_handshake_failed"] else None)(
        read_stats(stats)), what="the refusal counted")
    assert doc["tls"]["handshake_failures"] == {"wrong_version_number": 1}
    assert doc["tls"]["handshakes_total"] == 1
    d.signal()
    assert d.wait() == 0
    log = [ln for ln in d.stderr_text().splitlines() if "TLS handshake failed" in ln]
    assert len(log) == 1 and "(wrong_version_number)" in log[0], log


def test_tls_renegotiation_is_refused(daemon):
    """TLS 1.2 lets a client ask for a new handshake mid-connection (a CPU lever for a
    client against a server: CVE-2011-1473); line-echo refuses with OpenSSL's
    no_renegotiation alert. openssl s_client sends the request on an "R" line."""
    d = daemon("--tls-cert", os.path.join(CERTS, "server.pem"),
               "--tls-key", os.path.join(CERTS, "server.key"))
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{d.address[1]}",
                          "-tls1_2", "-CAfile", os.path.join(CERTS, "ca.pem"),
                          "-servername", "localhost"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    bound = threading.Timer(20, p.kill)  # a refusal that never comes would leave it waiting
    bound.start()
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"before\n")
        p.stdin.flush()
        while p.stdout.readline() != b"before\n":  # the echo, after the handshake's report
            pass
        p.stdin.write(b"R\n")
        p.stdin.flush()
        rest = p.stdout.read()  # s_client gives up and exits
    finally:
        bound.cancel()
        if p.poll() is None:
            p.kill()
        p.wait(10)
    assert b"RENEGOTIATING" in rest and b"no renegotiation" in rest, rest[-500:]
    with _tls_client(d.address) as s:  # and the daemon serves on
        s.sendall(b"still here\n")
        assert recv_exactly(s, 11) == b"still here\n"


def test_tls_verify_client_requires_a_certificate(daemon):
    d = daemon("--tls-cert", os.path.join(CERTS, "server.pem"),
               "--tls-key", os.path.join(CERTS, "server.key"),
               "--tls-ca", os.path.join(CERTS, "ca.pem"), "--tls-verify-client")
    with _tls_client(d.address, cert=os.path.join(CERTS, "client.pem"),
                     key=os.path.join(CERTS, "client.key")) as s:
        s.sendall(b"with a certificate\n")
        assert recv_exactly(s, 19) == b"with a certificate\n"
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):  # the alert says why
        with _tls_client(d.address) as s:  # TLS 1.3: refused on the first read
            s.sendall(b"without\n")
            s.recv(100)


def test_port_in_use_exits_1_with_one_line(daemon):
    d = daemon()
    host, port = d.address
    for extra in ([], ["--workers", "2"]):
        r = subprocess.run([*LINE_ECHO, "--port", str(port), *extra], capture_output=True,
                           text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use" in lines[0].lower(), lines
    echo_ok(d)


def test_bind_refused_exits_1():
    r = subprocess.run([*LINE_ECHO, "--host", "192.0.2.1", "--port", "0"], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)  # an address this host does not have
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1


def test_workers_share_the_port_and_a_killed_worker_is_restarted(daemon, tmp_path):
    import json

    from reactor import read_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--workers", "2", "--stats-socket", path)
    for i in range(50):
        echo_ok(d, b"w%d\n" % i)
    doc = read_stats(path)
    pids = [w["pid"] for w in doc["workers"]]
    assert len(pids) == 2, json.dumps(doc)
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: len({w["pid"] for w in read_stats(path)["workers"]} - set(pids)) == 1,
             what="a new worker")
    for i in range(20):
        echo_ok(d, b"after %d\n" % i)
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0


def test_emfile_is_refused_without_spinning_and_serving_goes_on(tmp_path):
    """RLIMIT_NOFILE lowered in the daemon: excess connections get ERR server full."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    from tests.conftest import Daemon

    d = Daemon(["--port", "0", "--max-conns", "1000", "--log-level", "warning"],
               preexec=low_limit)
    try:
        held, refused = connect_many_expect_refusals(d.connect, 60)
        assert refused > 0 and len(held) > 10
        cpu0 = cpu_ticks(d.pid)
        time.sleep(1.0)
        assert cpu_ticks(d.pid) - cpu0 < 50  # < 0.5 s of CPU in 1 s: not spinning
        for s in held[:5]:
            s.close()
        time.sleep(0.2)
        echo_ok(d, b"after the storm\n")
        for s in held[5:]:
            s.sendall(b"alive\n")
            assert recv_exactly(s, 6) == b"alive\n"
            s.close()
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0
        err = d.stderr_text()
        assert "out of file descriptors" in err
        assert err.count("out of file descriptors") <= 3  # rate-limited
    finally:
        d.stop()


def test_line_timeout_answers_a_slowloris_and_spares_steady_lines(daemon, tmp_path):
    from reactor import read_stats

    path = str(tmp_path / "stats.sock")
    d = daemon("--line-timeout", "1", "--stats-socket", path)
    slow = d.connect()
    steady = d.connect()
    start = time.monotonic()
    slow.sendall(b"one\ntwo\nth")
    sent = b""
    while time.monotonic() - start < 2.5:  # one byte every 0.25 s for the slow one...
        time.sleep(0.25)
        try:
            slow.sendall(b"r")
        except OSError:  # closed by the timeout meanwhile
            pass
        # ...and for the steady one, a line split in halves 0.25 s apart, each completed.
        half = b"steady x" if not sent or sent.endswith(b"\n") else b" done\n"
        steady.sendall(half)
        sent += half
    got = recv_until_eof(slow)
    elapsed = time.monotonic() - start
    assert got == b"one\ntwo\nERR line timeout\n"
    assert 1.0 <= elapsed < 5.0
    steady.sendall(b"last\n")
    sent += b"last\n"
    want = sent[:sent.rindex(b"\n") + 1]
    assert recv_exactly(steady, len(want)) == want
    slow.close()  # the server lingers for our FIN before it counts the close
    doc = wait_stats(path, "line_timeouts", 1)
    assert doc["closed"]["line_timeout"] == 1
    from tests.integration.test_fd_stats import fd_stats
    r = json.loads(fd_stats(str(d.pid), "--json", "--stats-socket", path).stdout)["reactor"]
    assert r["line_timeouts"] == 1 and r["listeners"][0]["line_timeout_s"] == 1.0
    assert doc["listeners"][0]["line_timeout_s"] == 1.0 and doc["connections"] == 1
    steady.close()


def wait_stats(path: str, key: str, value: int, timeout: float = 15.0) -> dict:
    from reactor import read_stats

    wait_for(lambda: read_stats(path)[key] == value, timeout, f"stats {key} == {value}")
    return read_stats(path)


def test_max_send_buffer_closes_a_peer_sent_more_than_it_at_once(daemon, tmp_path):
    path = str(tmp_path / "stats.sock")
    d = daemon("--max-line", "33554432", "--max-send-buffer", "1000000", "--write-timeout", "0",
               "--stats-socket", path)
    hog = d.connect()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    other = d.connect()
    # One 20 MB line: its echo is one 20 MB reply, far more than the kernel's buffers take
    # (tcp_wmem allows a 4 MiB send buffer), so over 1 MB of it stays queued: the limit.
    line = bytes(b for b in range(256) if b != 10) * 80000 + b"\n"
    hog.sendall(line)
    doc = wait_stats(path, "slow_consumer_closes", 1)
    assert doc["closed"]["slow_consumer"] == 1 and doc["connections"] == 1
    assert doc["listeners"][0]["max_send_buffer"] == 1000000
    got = recv_until_eof(hog)
    assert line.startswith(got) and len(got) < len(line)  # a prefix, then the abort
    payload = b"".join(b"other %d\n" % i for i in range(1000))
    other.sendall(payload)
    assert recv_exactly(other, len(payload)) == payload
    other.close()
    hog.close()


def test_write_timeout_closes_a_peer_that_stops_reading(daemon, tmp_path):
    path = str(tmp_path / "stats.sock")
    d = daemon("--write-timeout", "1", "--stats-socket", path)
    hog = d.connect()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    other = d.connect()
    line = b"h" * 999 + b"\n"
    start = time.monotonic()
    closed = False
    while not closed:  # send until the server stops taking bytes, then until it closes
        assert time.monotonic() - start < 20, "the peer that never reads was never closed"
        try:
            hog.send(line * 64)
        except BlockingIOError:
            time.sleep(0.02)
        except OSError:  # reset: the server aborted it
            closed = True
        else:
            continue
        from reactor import read_stats
        closed = closed or read_stats(path)["slow_consumer_closes"] == 1
        payload = b"other %f\n" % time.monotonic()  # meanwhile the others are served
        other.sendall(payload)
        assert recv_exactly(other, len(payload)) == payload
    doc = wait_stats(path, "slow_consumer_closes", 1)
    assert doc["connections"] == 1 and doc["listeners"][0]["write_timeout_s"] == 1.0
    from tests.integration.test_fd_stats import fd_stats
    view = fd_stats(str(d.pid), "--stats-socket", path).stdout
    assert "write timeout 1 s" in view and "slow_consumer_closes 1" in view
    assert "line timeout off  line_timeouts 0  max send buffer 4194304 B" in view
    other.close()
    hog.close()
