"""tools/bench.py --smoke: the benchmark harness runs end to end and verifies what it counts.

No speed is asserted here: CI machines are shared and noisy. What is asserted is that every
server that can run on this machine ran every workload (the per-line asyncio peer and py-et
only at the steps the smoke plan names), that the bytes and connections were verified, that
the no-window flood and the open loop recorded their fields with sane values (every
connection initiated exactly once, lines per connection, CPU per line, line-echo's stats
sampled), and that the harness exits 0. uvloop is optional (the ``bench`` extra) and so is
py_et_echo.py (``../shared/bench`` beside the clone): without one, that peer is skipped with
a note, and that is a pass. The asyncio peer's two styles are also checked directly on a
line split across sends and a partial line at EOF, which the generator never sends; the
tcpkali summary parser and the stall detector on hand-made inputs.

TLS (issue 13): the smoke run's TLS firehose and handshake loop ran on exactly the servers
that speak TLS (line-echo, asyncio, uvloop), full TLS 1.3 handshakes, every byte and
connect() accounted for; the TLS generator itself is shown to catch a server that changes a
byte or closes early (a deliberately broken TLS echo below), and the asyncio peer's TLS
mode to echo lines split across records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys

from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "tools" / "bench.py"
WORKLOADS = {"firehose", "closed", "idle", "accept", "timers", "flood", "open"}
TLS_WORKLOADS = {"tls", "handshake"}
TLS_SERVERS = {"line-echo", "asyncio", "uvloop"}
CERTS = ROOT / "tests" / "certs"
TLSLOAD_C = ROOT / "tools" / "bench" / "tlsload.c"
PY_ET = ROOT.parent / "shared" / "bench" / "py_et_echo.py"
sys.path.insert(0, str(ROOT / "tools"))
from benchlib.flood import parse_tcpkali, summarise_stats  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the benchmark's load generator is C compiled at run time")
    out = tmp_path_factory.mktemp("bench") / "records.jsonl"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--quiet", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, records


ALL_SERVERS = {"line-echo", "py-et", "asyncio-lines", "asyncio", "uvloop", "c-echo"}


def expected_servers() -> set[str]:
    want = {"line-echo", "asyncio-lines", "asyncio", "c-echo"}
    if importlib.util.find_spec("uvloop") is not None:
        want.add("uvloop")
    py_et = Path(os.environ.get("BENCH_PY_ET") or PY_ET)
    if (py_et / "py_et_echo.py" if py_et.is_dir() else py_et).is_file():
        want.add("py-et")
    return want


def test_smoke_exits_zero_and_prints_one_table_per_workload(smoke):
    done, _ = smoke
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for title in ("### Firehose", "### Closed loop", "### Idle memory", "### Accept under load",
                  "### Idle-timer re-arm", "### Flood: no window", "### Flood: starvation",
                  "### Open loop", "### Targets"):
        assert title in done.stdout
    if openssl_headers():
        for title in ("### TLS firehose", "### TLS handshakes",
                      "| TLS firehose 1000 conns ≥ 2× asyncio TLS"):
            assert title in done.stdout


def test_the_resp_workload_measures_resp_kv_beside_redis_server(smoke):
    done, _ = smoke
    assert "## RESP: docs/examples/resp_kv.py and redis-server" in done.stdout
    if shutil.which("redis-benchmark") and shutil.which("redis-server"):
        table = done.stdout.split("## RESP", 1)[1]
        for test in ("PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"):
            row = re.search(rf"^{test} +([\d,]+) +([\d,]+) +([\d.]+)$", table, re.M)
            assert row and float(row.group(3)) > 0, f"no {test} row with both servers"


def test_every_server_that_can_run_ran_every_workload(smoke):
    _, records = smoke
    run = [r for r in records if r["kind"] == "run"]
    assert len(run) == 1
    assert set(run[0]["servers"]) == expected_servers()
    skipped = {r["server"] for r in records if r["kind"] == "skip"}
    assert skipped == ALL_SERVERS - expected_servers()
    only_at = {server: set(steps) for server, steps in run[0]["plan"]["only_at"]}
    steps = {(r["workload"], r["config"], r["server"])
             for r in records if r["kind"] == "measurement"}
    measured = {(w, s) for w, _, s in steps}
    for workload in WORKLOADS - {"timers"}:
        for server in expected_servers() - set(only_at):
            assert (workload, server) in measured
    for server, named in only_at.items():  # tcpkali runs only with --tcpkali, not here
        if server in skipped:  # py-et without ../shared beside the clone: skipped, checked above
            continue
        assert {f"{w}:{c}" for w, c, s in steps if s == server} == {
            n for n in named if not n.startswith("tcpkali:")}
    assert {("timers", "line-echo"), ("timers", "asyncio")} <= measured


def test_every_measurement_verified_its_bytes_and_connections(smoke):
    _, records = smoke
    measurements = [r for r in records if r["kind"] == "measurement"]
    assert measurements
    for r in measurements:
        assert "error" not in r, r
        if r["workload"] == "flood":
            # Unbounded by design: a server that starves or drops connections under it
            # (uvloop leaves some unserved even at 100) fails its row, not the harness.
            assert r["bytes_ok"] is True and r["mismatches"] == 0, r
            continue
        assert r["verified"] is True, (r["workload"], r["server"], r["notes"])
    streams = [r for r in measurements if r["workload"] in ("firehose", "closed", "accept")]
    assert all(r["bytes_verified"] > 0 and r["mismatches"] == 0 for r in streams)
    per_line = {r["workload"] for r in streams if r["server"] == "asyncio-lines"}
    assert per_line >= {"firehose", "closed"}  # its bytes were checked, as every peer's
    for r in measurements:
        if r["workload"] == "idle":
            assert r["held_silent"] >= r["conns"] and r["echoed"] == r["conns"]
        if r["workload"] == "accept":
            assert r["probes_opened"] == r["extra"]


@pytest.mark.parametrize("style", ["batch", "lines"])
def test_asyncio_peer_echoes_split_lines_and_the_partial_line_at_eof(style):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "bench" / "aio_echo.py"),
                             "--port", "0", "--style", style, "--max-seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        sent, got = b"", b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for piece in (b"ab", b"c\nde", b"f\n\n\ng", b"h", b"\nij"):
                s.sendall(piece)
                sent += piece
                while len(got) < sent.rfind(b"\n") + 1:  # every complete line, before more
                    data = s.recv(4096)
                    assert data, (sent, got)
                    got += data
            s.shutdown(socket.SHUT_WR)
            while data := s.recv(4096):
                got += data
        assert got == sent
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def _new(records, workload):
    return [r for r in records if r["kind"] == "measurement" and r["workload"] == workload]


def test_flood_counts_every_connection_and_what_each_got(smoke):
    _, records = smoke
    floods = _new(records, "flood")
    assert {r["server"] for r in floods} == expected_servers() - {"asyncio-lines"}
    for r in floods:
        n = r["conns"]
        assert r["requested"] == n and r["initiated"] == n, r  # none reopened, none missing
        assert r["open"] + r["dropped"] + r["connect_failed"] == n, r  # each accounted once
        assert r["opened_exactly"] is (r["open"] == n)
        assert r["verified"] is (not r["notes"])
        assert (r["starved"] > 0) is any("never served" in note for note in r["notes"])
        assert r["lines"] > 0 and r["lines_per_s"] > 0 and r["mismatches"] == 0
        # lines per connection in the window: ordered, and the median times n is at most
        # what came back in all
        assert 0 <= r["conn_lines_min"] <= r["conn_lines_med"] <= r["conn_lines_max"]
        assert r["conn_lines_med"] * (n // 2) <= r["lines"]
        assert 0 <= r["silent_in_window"] <= n
        assert 0 <= r["gap_max_s"] <= r["conn_gap_max_s"] <= r["window_s"] + 0.01
        assert r["t0_mono"] < r["t1_mono"]
        assert r["server_cpu_s"] >= 0 and r["server_cpu_ns_per_line"] > 0
        assert set(r["kernel"]) >= {"TCPTimeouts", "RetransSegs"}
    le = [r for r in floods if r["server"] == "line-echo"]
    assert le, "line-echo was flooded"
    for r in le:  # its stats socket was sampled through the window
        # a read may time out on a loaded machine; most must succeed
        assert r["stats_samples"] >= 2 and r["stats_failures"] < r["stats_samples"], r.get(
            "stats_failure_first")
        assert r["zero_out_max_s"] is not None and r["zero_out_max_s"] >= 0
        assert r["paused_reading_max"] is not None and r["paused_reading_max"] >= 0
        assert r["chunks_exhausted_delta"] is not None


def test_open_loop_echoes_every_offered_line_and_prices_it(smoke):
    _, records = smoke
    opens = _new(records, "open")
    warmup = next(r for r in records if r["kind"] == "run")["plan"]["warmup"]
    assert {r["server"] for r in opens} == expected_servers() - {"asyncio-lines"}
    for r in opens:
        n, rate = r["conns"], r["rate_per_conn"]
        assert r["initiated"] == n and r["open"] == n
        assert r["offered_per_s"] == pytest.approx(n * rate)
        assert r["unanswered"] == 0 and r["mismatches"] == 0
        # every connection was sent lines: each got at least one echo in the window
        assert r["silent_in_window"] == 0 and r["conn_lines_min"] >= 1
        # echoed in the window: at most what fell due in it and in the warm-up before it
        assert 0 < r["lines"] <= r["due_in_window"] + n * rate * warmup + n
        assert r["lat_samples"] + r["lat_skipped"] == r["lines"]
        assert r["server_cpu_s_per_mline"] == pytest.approx(r["server_cpu_s"] * 1e6 / r["lines"])


def test_summarise_stats_finds_the_longest_stretch_with_nothing_sent():
    samples = [(t / 2, {"bytes_out": b, "paused_reading": p})
               for t, (b, p) in enumerate([(0, 0), (10, 3), (10, 5), (10, 1), (10, 0),
                                           (20, 0), (20, 2), (30, 0)])]
    got = summarise_stats(samples, 0.0, 3.5, 0.5, 0)
    assert got["zero_out_max_s"] == 1.5  # 10 from t=0.5 to t=2.0
    assert got["paused_reading_max"] == 5
    assert got["pool_refused_delta"] is None  # not in these documents: '-'
    assert got["stats_samples"] == 8
    assert summarise_stats(samples[:1], 0.0, 0.0, 0.5, 0)["zero_out_max_s"] is None


def test_tcpkali_summary_is_parsed_into_lines_per_second():
    text = ("Ramped up to 100 connections.\n"
            "Total data sent:     2116.2 MiB (2218949565 bytes)\n"
            "Total data received: 1418.9 MiB (1487846078 bytes)\n"
            "Test duration: 3.00071 s.\n")
    got = parse_tcpkali(text)
    assert got["bytes_received"] == 1487846078 and got["ramped_up"] == 100
    assert got["lines_per_s"] == pytest.approx(1487846078 / 5 / 3.00071)
    with pytest.raises(Exception):
        parse_tcpkali("Total data sent: 1 MiB (1048576 bytes)\n")


# -- TLS (issue 13) ------------------------------------------------------------------------

def openssl_headers() -> bool:
    """Whether this machine can build the TLS generator (cc and OpenSSL's headers): if it
    can, the smoke run must have run the TLS workloads, not skipped them."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    probe = subprocess.run([cc, "-x", "c", "-fsyntax-only", "-"],
                           input="#include <openssl/ssl.h>\n", capture_output=True, text=True,
                           timeout=60)
    return probe.returncode == 0


def test_tls_workloads_ran_on_the_tls_servers_or_were_skipped_with_a_note(smoke):
    done, records = smoke
    run = next(r for r in records if r["kind"] == "run")
    tls = run["tls"]
    assert tls["asked"] is True  # --smoke runs every workload
    recs = [r for r in records if r["kind"] == "measurement" and r["workload"] in TLS_WORKLOADS]
    if not tls["available"]:
        assert not openssl_headers(), "OpenSSL's headers are here, yet TLS was skipped"
        assert tls["skipped"] and tls["skipped"] in run["notes"] and not recs
        assert "TLS workloads skipped" in done.stdout
        pytest.skip(tls["skipped"])
    want = TLS_SERVERS & expected_servers()
    for workload in TLS_WORKLOADS:
        assert {r["server"] for r in recs if r["workload"] == workload} == want, workload


def _tls_records(records, workload):
    recs = _new(records, workload)
    if not recs:
        pytest.skip("TLS workloads not run here (see the test above)")
    return recs


def test_tls_firehose_verified_every_byte_on_every_connection(smoke):
    _, records = smoke
    for r in _tls_records(records, "tls"):
        n = r["conns"]
        assert r["verified"] is True and r["notes"] == [], (r["server"], r["notes"])
        assert "error" not in r
        # each connection initiated once, handshaken once (no resumption), and still open
        assert r["requested"] == r["initiated"] == r["handshakes"] == r["open"] == n, r
        assert r["resumed"] == 0 and r["opened_exactly"] is True
        assert r["tls_version"] == "TLSv1.3" and r["verify_server"] is True and r["cipher"]
        assert r["mismatches"] == 0 and r["dropped"] == 0 and r["starved"] == 0
        # the window was respected and every line counted came back whole
        assert r["window_bytes"] >= 5 and r["lines"] > 0
        assert r["bytes_verified"] >= r["lines"] * 5
        assert r["lines_per_s"] == pytest.approx(r["lines"] / r["window_s"], rel=1e-3)
        assert 0 <= r["conn_lines_min"] <= r["conn_lines_med"] <= r["conn_lines_max"]
        assert r["conn_lines_min"] * n <= r["lines"] <= r["conn_lines_max"] * n
        assert r["server_cpu_ns_per_line"] == pytest.approx(r["server_cpu_s"] * 1e9 / r["lines"])
        assert r["gen_cpu_ns_per_line"] == pytest.approx(
            r["gen_busy_pct"] / 100 * r["window_s"] * 1e9 / r["lines"])


def test_tls_handshakes_are_full_and_every_connect_is_accounted_for(smoke):
    _, records = smoke
    recs = _tls_records(records, "handshake")
    # unpaced and paced, each on every TLS server
    assert {r["rate"] > 0 for r in recs} == {False, True}
    for r in recs:
        k = r["clients"]
        assert r["verified"] is True and r["notes"] == [], (r["server"], r["notes"])
        assert r["requested"] == k and r["tls_version"] == "TLSv1.3" and r["resumed"] == 0
        assert r["config"] == f"{k}x{r['rate']:.0f}"
        if r["rate"]:  # paced: never more cycles than were offered (and k begun before)
            assert r["cycles"] <= r["rate"] * r["window_s"] + k + 1, r
        # every connect() ended as a verified cycle, a failure, or in flight at the end
        assert r["initiated"] == r["completed"] + r["failed"] + r["in_flight_end"], r
        assert r["failed"] == 0 and r["in_flight_end"] == 0 and r["mismatches"] == 0
        # a cycle is a handshake and its echo: never more cycles than handshakes
        assert r["completed"] <= r["handshakes"] <= r["initiated"]
        assert 0 < r["cycles"] <= r["completed"]
        assert r["cycles"] <= r["handshakes_in_window"] + k  # begun before the window, at most k
        assert r["handshakes_per_s"] == pytest.approx(r["cycles"] / r["window_s"], rel=1e-3)
        assert r["server_cpu_us_per_handshake"] == pytest.approx(
            r["server_cpu_s"] * 1e6 / r["cycles"])
        assert 0 < r["hs_p50_us"] <= r["hs_p99_us"] <= r["hs_p999_us"]
        assert r["hs_p50_us"] <= r["cycle_p50_us"] * 1.01
        assert r["cycle_p99_us"] <= r["cycle_max_us"] * 1.01


@pytest.fixture(scope="module")
def tlsload(tmp_path_factory):
    if not openssl_headers():
        pytest.skip("no C compiler or no OpenSSL headers: the TLS generator cannot be built")
    out = tmp_path_factory.mktemp("tlsload") / "tlsload"
    cc = shutil.which("cc") or shutil.which("gcc")
    done = subprocess.run([cc, "-O2", "-o", str(out), str(TLSLOAD_C), "-lssl", "-lcrypto"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


# A TLS echo that misbehaves on purpose: --corrupt N changes the Nth byte echoed on each
# connection, --close-after N closes a connection once it has echoed N bytes.
BROKEN_TLS_ECHO = r"""
import asyncio, ssl, sys
mode, n = sys.argv[1], int(sys.argv[2])
class Broken(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.done = t, 0
    def data_received(self, data):
        if mode == "corrupt" and self.done < n <= self.done + len(data):
            i = n - self.done - 1
            data = data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:]
        self.done += len(data)
        self.t.write(data)
        if mode == "close-after" and self.done >= n:
            self.t.close()
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    srv = await asyncio.get_running_loop().create_server(Broken, "127.0.0.1", 0, ssl=ctx)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(30)
asyncio.run(main())
"""


def _against_broken(tlsload, mode, n, load_args):
    proc = subprocess.Popen([sys.executable, "-c", BROKEN_TLS_ECHO, mode, str(n),
                             str(CERTS / "server.pem"), str(CERTS / "server.key")],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert port.isdigit(), port
        done = subprocess.run([str(tlsload), "--port", port, "--duration", "0.5", "--warmup", "0.2",
                               "--drain-seconds", "2", *load_args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_tls_generator_catches_a_changed_byte_and_an_early_close(tlsload):
    from benchlib.tls import handshake_checks, tls_firehose_checks

    # the firehose: byte 1,000 of each connection's echo changed, then all else right
    out = _against_broken(tlsload, "corrupt", 1000, ["--mode", "firehose", "--conns", "4",
                                                     "--ca", str(CERTS / "ca.pem")])
    assert out["mismatches"] >= 4 and out["handshakes"] == 4, out
    checks = tls_firehose_checks(out, 4)
    assert checks["verified"] is False and checks["bytes_ok"] is False
    # the handshake loop: byte 5 of every echoed line changed: no cycle may count
    out = _against_broken(tlsload, "corrupt", 5, ["--mode", "handshake", "--conns", "2"])
    assert out["completed"] == 0 and out["cycles"] == 0 and out["mismatch_conns"] > 0, out
    assert out["initiated"] == out["mismatch_conns"] + out["in_flight_end"]
    assert handshake_checks(out)["verified"] is False
    # the firehose: every connection closed by the server after 100 bytes
    out = _against_broken(tlsload, "close-after", 100, ["--mode", "firehose", "--conns", "4"])
    assert out["dropped"] == 4 and out["open"] == 0 and out["mismatches"] == 0, out
    assert tls_firehose_checks(out, 4)["verified"] is False


def test_asyncio_peer_echoes_lines_split_across_tls_records():
    import ssl

    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "bench" / "aio_echo.py"),
                             "--port", "0", "--max-seconds", "30",
                             "--tls-cert", str(CERTS / "server.pem"),
                             "--tls-key", str(CERTS / "server.key")],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        sent, got = b"", b""
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.3"
            for piece in (b"ab", b"c\nde", b"f\n\n\ng", b"h", b"\nij", b"k\n"):
                s.sendall(piece)  # one TLS record each
                sent += piece
                while len(got) < sent.rfind(b"\n") + 1:  # every complete line, before more
                    data = s.recv(4096)
                    assert data, (sent, got)
                    got += data
        assert got == sent
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
