"""tools/scale.py's own logic: planning, the verdict on received bytes, the client's read
path on real sockets, the pacer, the result and the exit status. No server is started here
(tests/integration/test_scale.py runs the tool against line-echo and broken servers)."""

from __future__ import annotations

import errno
import itertools
import json
import math
import socket
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from scalelib import cli, client, fleet, plan  # noqa: E402
from scalelib.verify import (PING, Failure, Scan, failure_of_errno, line, scan,  # noqa: E402
                             verify_stream)


# ------------------------------------------------------------------ planning

def test_source_addresses_skip_the_server_and_host_parts_0_and_255():
    addrs = plan.source_addresses(600)
    assert addrs[:2] == ["127.0.0.2", "127.0.0.3"]
    assert "127.0.0.1" not in addrs and len(set(addrs)) == 600
    assert not any(a.endswith((".0", ".255")) for a in addrs)
    assert addrs[252:254] == ["127.0.0.254", "127.0.1.1"]  # .255, .0 of the next /24 skipped
    assert "127.0.0.9" not in plan.source_addresses(20, skip=("127.0.0.9",))


def test_source_addresses_run_out_at_the_end_of_127_0_0_0_8():
    with pytest.raises(ValueError, match="fewer than"):
        plan.source_addresses(256 * 256 * 254)
    assert len(plan.source_addresses(10)) == 10


def test_per_source_default_takes_a_quarter_of_the_port_range_and_caps_at_7000():
    assert plan.per_source_default((32768, 60999)) == 7_000  # 28,232 ports here
    assert plan.per_source_default((50000, 51999)) == 500
    assert plan.per_source_default((60000, 60000)) == 1


def test_read_port_range_from_proc_or_the_default(tmp_path):
    f = tmp_path / "range"
    f.write_text("40000\t40999\n")
    assert plan.read_port_range(str(f)) == (40000, 40999)
    f.write_text("garbage\n")
    assert plan.read_port_range(str(f)) == plan.DEFAULT_PORT_RANGE
    assert plan.read_port_range(str(tmp_path / "missing")) == plan.DEFAULT_PORT_RANGE


def test_procs_default_from_the_fd_limit():
    assert plan.per_proc_limit(20_000) == 15_000
    assert plan.per_proc_limit(1024) == 1024 - plan.FD_MARGIN
    assert plan.default_procs(1, 20_000) == 1
    assert plan.default_procs(15_000, 20_000) == 1
    assert plan.default_procs(15_001, 20_000) == 2
    assert plan.default_procs(1_000_000, 20_000) == 67
    assert plan.default_procs(10_000, 1024) == math.ceil(10_000 / 960)


def test_a_million_needs_143_source_addresses_and_67_processes():
    p = plan.plan(1_000_000, plan.default_procs(1_000_000, 20_000),
                  plan.per_source_default((32768, 60999)), loopback=True)
    assert p.procs == 67 and len(p.sources) == 143 and p.per_source == 7_000
    assert p.sources[0] == "127.0.0.2" and p.sources[-1] == "127.0.0.144"
    assert max(s.count for s in p.shares) <= 15_000
    assert not p.warnings


@settings(max_examples=300)
@given(st.integers(1, 200_000), st.integers(1, 80), st.integers(100, 30_000))
def test_every_connection_is_planned_once_and_no_address_is_over_its_share(conns, procs,
                                                                            per_source):
    procs = min(procs, conns)
    p = plan.plan(conns, procs, per_source, loopback=True)
    assert len(p.shares) == procs
    assert sum(s.count for s in p.shares) == conns
    assert max(s.count for s in p.shares) - min(s.count for s in p.shares) <= 1
    assert len(p.sources) == math.ceil(conns / per_source)
    first = 0
    per_address: dict[str, int] = {}
    for s in p.shares:
        assert s.first == first and sum(n for _, n in s.sources) == s.count
        first += s.count
        for addr, n in s.sources:
            per_address[addr] = per_address.get(addr, 0) + n
    assert set(per_address) == set(p.sources)
    assert max(per_address.values()) <= per_source


def test_off_loopback_only_the_wildcard_source_and_a_warning_past_the_port_range():
    p = plan.plan(30_000, 2, 20_000, loopback=False, port_range=(32768, 60999))
    assert p.sources == ("",) and all(s.sources == (("", s.count),) for s in p.shares)
    assert len(p.warnings) == 1 and "28232 ephemeral ports" in p.warnings[0]
    assert not plan.plan(1000, 1, 20_000, loopback=False).warnings
    assert plan.is_loopback("127.9.8.7") and not plan.is_loopback("10.0.0.1")


def test_plan_refuses_impossible_numbers():
    for conns, procs, per_source in ((0, 1, 1), (3, 4, 1), (5, 1, 0)):
        with pytest.raises(ValueError):
            plan.plan(conns, procs, per_source, loopback=True)


def test_the_deadline_grows_with_n_hold_and_a_slower_rate():
    base = plan.deadline_s(10_000, 1, 10_000, 5, 30, 30)
    assert plan.deadline_s(100_000, 7, 10_000, 5, 30, 30) > base
    assert plan.deadline_s(10_000, 1, 10_000, 60, 30, 30) == pytest.approx(base + 55)
    assert plan.deadline_s(10_000, 1, 1_000, 5, 30, 30) > base
    assert plan.deadline_s(10_000, 1, 0, 5, 30, 30) > base  # unpaced: assumed 5,000/s


# ------------------------------------------------------------------ the verdict

A, B = line(3, 12345, 0), line(3, 12345, 1)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_lines_are_unique_per_connection_and_round_and_never_start_with_p():
    lines = {line(p, c, r) for p in range(3) for c in range(50) for r in (0, 1)}
    assert len(lines) == 300
    assert all(x.endswith(b"\n") and x.count(b"\n") == 1 and x[:1] != b"P" for x in lines)


def test_exact_echo_passes():
    assert verify_stream([A, B], [A + B]) == (None, 0)
    assert verify_stream([A, B], [A, B]) == (None, 0)


def test_pings_before_between_and_after_are_allowed_and_counted():
    assert verify_stream([A, B], [PING + A + PING * 2 + B + PING]) == (None, 4)
    assert verify_stream([A, B], [PING * 3, A, PING, B]) == (None, 4)


def test_a_changed_missing_or_extra_byte_is_a_mismatch():
    assert verify_stream([A, B], [A.replace(b"123", b"124") + B])[0] is Failure.MISMATCH
    assert verify_stream([A, B], [A.replace(b"123", b"12") + B])[0] is Failure.MISMATCH
    assert verify_stream([A, B], [A + b"x" + B])[0] is Failure.MISMATCH
    assert verify_stream([A, B], [A + B + b"x"])[0] is Failure.MISMATCH
    assert verify_stream([A, B], [A + B + A])[0] is Failure.MISMATCH  # a line echoed twice
    assert verify_stream([A, B], [B + A])[0] is Failure.MISMATCH      # out of order
    assert verify_stream([A, B], [A + b"PONG\n" + B])[0] is Failure.MISMATCH


def test_eof_before_the_last_line_is_whole_is_a_closed_early():
    assert verify_stream([A, B], [A]) == (Failure.CLOSED_EARLY, 0)
    assert verify_stream([A, B], [A + PING + B[:-1]]) == (Failure.CLOSED_EARLY, 1)
    assert verify_stream([A, B], []) == (Failure.CLOSED_EARLY, 0)


def test_an_err_line_has_its_own_kind():
    assert verify_stream([A], [b"ERR server full\n"])[0] is Failure.ERR_LINE


def test_scan_judges_a_partial_line_as_soon_as_it_can():
    assert scan(A[:5], A) == (Scan.PENDING, 0, A[:5])
    assert scan(PING + b"PI", A) == (Scan.PENDING, 1, b"PI")
    assert scan(b"scX", A)[0] is Scan.MISMATCH          # no prefix of A or of PING
    assert scan(A[:5], None)[0] is Scan.MISMATCH        # nothing expected: only PINGs
    assert scan(A + PING + b"x", A) == (Scan.MATCHED, 0, PING + b"x")  # the rest unscanned
    assert scan(b"", A) == (Scan.PENDING, 0, b"")


def valid_stream(data: st.DataObject) -> tuple[list[bytes], bytes, int]:
    conn = data.draw(st.integers(0, 10**6))
    lines = [line(data.draw(st.integers(0, 99)), conn, r) for r in (0, 1)]
    pings = [data.draw(st.integers(0, 3)) for _ in range(3)]
    stream = PING * pings[0] + lines[0] + PING * pings[1] + lines[1] + PING * pings[2]
    return lines, stream, sum(pings)


@settings(max_examples=300)
@given(st.data(), st.lists(st.integers(0, 200), max_size=12))
def test_any_split_of_a_valid_stream_verifies(data, cuts):
    lines, stream, pings = valid_stream(data)
    assert verify_stream(lines, split(stream, cuts)) == (None, pings)


@settings(max_examples=500)
@given(st.data(), st.lists(st.integers(0, 200), max_size=6))
def test_any_single_byte_change_fails(data, cuts):
    lines, stream, _ = valid_stream(data)
    at = data.draw(st.integers(0, len(stream) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != stream[at]))
    changed = stream[:at] + bytes([new]) + stream[at + 1:]
    assert verify_stream(lines, split(changed, cuts))[0] is not None


@settings(max_examples=300)
@given(st.data(), st.lists(st.integers(0, 200), max_size=6))
def test_any_byte_dropped_or_added_fails(data, cuts):
    lines, stream, _ = valid_stream(data)
    at = data.draw(st.integers(0, len(stream) - 1))
    dropped = stream[:at] + stream[at + 1:]
    assert verify_stream(lines, split(dropped, cuts))[0] in (Failure.MISMATCH,
                                                             Failure.CLOSED_EARLY)
    at = data.draw(st.integers(0, len(stream)))
    added = stream[:at] + bytes([data.draw(st.integers(0, 255))]) + stream[at:]
    assert verify_stream(lines, split(added, cuts))[0] is Failure.MISMATCH


def test_errnos_map_to_kinds():
    assert failure_of_errno(errno.ECONNREFUSED, True) is Failure.CONNECT_REFUSED
    assert failure_of_errno(errno.ETIMEDOUT, True) is Failure.CONNECT_TIMEOUT
    assert failure_of_errno(errno.ETIMEDOUT, False) is Failure.TIMEOUT
    assert failure_of_errno(errno.EADDRNOTAVAIL, True) is Failure.ADDR_UNAVAILABLE
    assert failure_of_errno(errno.EMFILE, True) is Failure.FD_LIMIT
    assert failure_of_errno(errno.ENFILE, True) is Failure.FD_LIMIT
    assert failure_of_errno(errno.ECONNRESET, False) is Failure.RESET
    assert failure_of_errno(errno.EHOSTUNREACH, True) is Failure.OTHER


# ------------------------------------------------------------------ the client, in-process

def new_client(count: int = 1, port: int = 9, rate: float = 0, max_pending: int = 512,
               defer_pings: bool = False) -> client.Client:
    return client.Client({
        "index": 3, "first": 12345, "count": count, "sources": [["", count]],
        "host": "127.0.0.1", "port": port, "rate": rate, "max_pending": max_pending,
        "connect_timeout_s": 30.0, "echo_timeout_s": 30.0, "max_seconds": 60,
        "defer_pings": defer_pings})


@pytest.fixture
def wired():
    """A client with connection 0 connected (a socketpair) and awaiting its first echo;
    ``feed(bytes)`` sends them from the 'server' side and lets the client read them."""
    c = new_client()
    mine, server = socket.socketpair()
    mine.setblocking(False)
    c.socks[0] = mine
    c.by_fd[mine.fileno()] = 0
    c.move(0, client.AWAIT_FIRST)

    def feed(data: bytes) -> None:
        server.sendall(data)
        c.readable(0, mine, 0.0)

    yield c, feed, server
    mine.close()
    server.close()


def test_the_client_verifies_both_rounds_with_pings_and_splits(wired):
    c, feed, server = wired
    for piece in (PING[:2], PING[2:] + A[:4], A[4:] + b"PI"):
        feed(piece)
    assert c.state[0] == client.HELD and c.established == 1 and c.partial == {0: b"PI"}
    feed(b"NG\n" + PING)
    assert c.pings == 3 and not c.partial
    c.go(0.0)
    assert server.recv(100) == B and c.state[0] == client.AWAIT_SECOND
    feed(B[:3])
    feed(B[3:])
    assert c.state[0] == client.DONE and c.verified == 1 and c.socks[0] is None
    assert c.in_state[client.DONE] == 1 and sum(c.in_state) == 1


def test_the_client_fails_a_changed_byte_with_a_sample(wired):
    c, feed, _ = wired
    feed(A[:-3] + b"x\n")
    assert c.state[0] == client.FAILED and dict(c.failures) == {"mismatch": 1}
    assert c.samples[0]["expected"] == A.decode() and c.samples[0]["got"].endswith("x\n")


def test_the_client_fails_anything_but_pings_while_held(wired):
    c, feed, _ = wired
    feed(A + PING)
    feed(b"hello\n")
    assert dict(c.failures) == {"mismatch": 1} and c.established == 1 and c.pings == 1


def test_the_client_fails_bytes_after_the_last_echo(wired):
    c, feed, server = wired
    feed(A)
    c.go(0.0)
    server.recv(100)
    feed(B + b"P")  # even a partial PING: the connection ends here
    assert dict(c.failures) == {"mismatch": 1} and c.verified == 0


def test_the_client_counts_an_eof_and_an_err_line(wired):
    c, feed, server = wired
    feed(b"ERR server full\n")
    assert dict(c.failures) == {"err_line": 1}
    d = new_client()
    mine, other = socket.socketpair()
    d.socks[0] = mine
    d.by_fd[mine.fileno()] = 0
    d.move(0, client.AWAIT_FIRST)
    other.sendall(A[:5])
    other.close()
    d.readable(0, mine, 0.0)
    d.readable(0, mine, 0.0)
    assert dict(d.failures) == {"closed_early": 1} and d.socks[0] is None


def _deferred_pair() -> tuple[client.Client, socket.socket, socket.socket]:
    """A --defer-pings client whose connection 0 is registered in its epoll and awaits its
    first echo."""
    c = new_client(defer_pings=True)
    mine, server = socket.socketpair()
    mine.setblocking(False)
    c.socks[0] = mine
    c.by_fd[mine.fileno()] = 0
    c.ep.register(mine.fileno(), client.select.EPOLLIN)
    c.move(0, client.AWAIT_FIRST)
    return c, mine, server


def test_deferred_pings_wake_nothing_during_the_hold_and_are_counted_at_the_end():
    c, mine, server = _deferred_pair()
    server.sendall(A)
    assert c.ep.poll(1.0) == [(mine.fileno(), client.select.EPOLLIN)]
    c.readable(0, mine, 0.0)
    assert c.state[0] == client.HELD
    server.sendall(PING * 3)
    assert c.ep.poll(0.05) == []  # the heartbeats wait in the kernel
    c.go(0.0)
    assert server.recv(100) == B and c.state[0] == client.AWAIT_SECOND
    server.sendall(B)
    for _ in range(2):  # PINGs and the echo may come in one read or two
        if c.state[0] == client.DONE:
            break
        assert c.ep.poll(1.0)
        c.readable(0, mine, 0.0)
    assert c.state[0] == client.DONE and c.verified == 1 and c.pings == 3
    server.close()


def test_deferred_pings_still_see_a_reset_during_the_hold_and_a_close_at_the_end():
    c, mine, server = _deferred_pair()
    server.sendall(A)
    c.ep.poll(1.0)
    c.readable(0, mine, 0.0)
    server.sendall(PING)
    server.close()  # a socketpair's close is a hang-up both ways: epoll reports it at once
    events = c.ep.poll(1.0)
    assert events and events[0][1] & client.select.EPOLLHUP
    c.readable(0, mine, 0.0)  # the PING first,
    c.readable(0, mine, 0.0)  # then the EOF
    assert dict(c.failures) == {"closed_early": 1} and c.pings == 1


def test_timeouts_expire_in_order_and_stop_fails_the_rest():
    c = new_client(count=3)
    for i, t in enumerate((1.0, 2.0, 3.0)):
        c.move(i, client.AWAIT_FIRST)
        c.since[i] = t
        c.echo_q.append(i)
    c.expire(now=32.5)  # echo timeout 30 s: the first two are late
    assert list(c.state) == [client.FAILED, client.FAILED, client.AWAIT_FIRST]
    assert dict(c.failures) == {"timeout": 2}
    c.stop()
    assert dict(c.failures) == {"timeout": 3} and c.in_state[client.FAILED] == 3


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s
    s.close()


def test_the_pacer_opens_what_the_rate_allows_and_no_more_than_max_pending(listener):
    port = listener.getsockname()[1]
    c = new_client(count=50, port=port, rate=100)
    c.t_start = 1000.0
    wait = c.open_more(1000.055)  # due: int(0.055 * 100) + 1 = 6
    assert c.next_i == 6 and c.in_state[client.CONNECTING] + c.in_state[client.FAILED] == 6
    assert 0 <= wait <= 0.1
    d = new_client(count=50, port=port, max_pending=4)  # unpaced: only the cap holds it
    d.t_start = 0.0
    d.open_more(0.0)
    d.open_more(0.0)
    assert d.next_i == 4
    for x in (c, d):
        x.stop()


def test_the_client_binds_each_connection_to_its_planned_source(listener):
    port = listener.getsockname()[1]
    c = new_client(count=3, port=port)
    c.segments.clear()
    c.segments.extend([("127.0.0.2", 2), ("127.0.0.3", 1)])
    c.t_start = 0.0
    c.open_more(0.0)
    peers = sorted(listener.accept()[1][0] for _ in range(3))
    assert peers == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
    assert c.sources_used == ["127.0.0.2", "127.0.0.3"]
    c.stop()


# ------------------------------------------------------------------ the result

def fake_client(share: plan.Share, done: dict | None, last: dict | None = None):
    return SimpleNamespace(share=share, done=done, last=last or done)


def report(verified: int, failures: dict, established: int, sources: list[str]) -> dict:
    return {"established": established, "verified": verified, "pings": 7,
            "failures": failures, "errnos": {"ECONNREFUSED": failures.get("connect_refused", 0)},
            "samples": [], "sources_used": sources, "t_established": 10.5, "t_done": 20.0}


def make_run(clients, pid=None) -> fleet.Run:
    p = plan.plan(sum(c.share.count for c in clients), len(clients), 150, loopback=True)
    opts = fleet.Options(host="127.0.0.1", host_ip="127.0.0.1", port=9000, hold_s=5.0,
                         rate=10_000.0, connect_timeout_s=30.0, echo_timeout_s=30.0,
                         max_pending=512, deadline_s=100.0, pid=pid)
    r = fleet.Run(p, opts, lambda s: None)
    r.clients = clients
    r.t0, r.t_establish = 10.0, 0.5
    return r


def test_the_result_sums_the_clients_and_passes_only_if_all_verified():
    p = plan.plan(200, 2, 150, loopback=True)
    r = make_run([fake_client(p.shares[0], report(100, {}, 100, ["127.0.0.2"])),
                  fake_client(p.shares[1], report(100, {}, 100, ["127.0.0.2", "127.0.0.3"]))])
    res = r.result()
    for key in ("conns", "established", "verified", "failures", "t_establish_s", "t_final_s",
                "pings", "procs", "source_addresses"):
        assert key in res
    assert (res["conns"], res["established"], res["verified"], res["pings"]) == (200, 200, 200,
                                                                                  14)
    assert res["source_addresses"] == 2 and res["procs"] == 2 and res["t_final_s"] == 10.0
    assert set(res["failures"]) == {k.value for k in Failure}
    assert not any(res["failures"].values())
    assert "server_rss_bytes" not in res
    assert fleet.exit_code(res) == 0


def test_a_failure_or_a_lost_client_makes_it_exit_1_and_every_connection_is_counted():
    p = plan.plan(200, 2, 150, loopback=True)
    progress = {"established": 40, "verified": 0, "pings": 0, "failures": {"reset": 2}}
    r = make_run([fake_client(p.shares[0], report(99, {"connect_refused": 1}, 99, ["a"])),
                  fake_client(p.shares[1], None, progress)])
    res = r.result()
    assert res["verified"] == 99 and res["established"] == 139 and res["procs_lost"] == 1
    assert res["failures"]["connect_refused"] == 1 and res["failures"]["reset"] == 2
    assert res["failures"]["client_lost"] == 98
    assert res["verified"] + sum(res["failures"].values()) == res["conns"]
    assert res["errnos"] == {"ECONNREFUSED": 1}
    assert fleet.exit_code(res) == 1


def test_with_a_pid_the_result_has_the_server_rss_per_connection():
    p = plan.plan(100, 1, 150, loopback=True)
    r = make_run([fake_client(p.shares[0], report(100, {}, 100, ["a"]))], pid=1)
    r.rss_baseline, r.rss_hold, r.server_procs = 1_000_000, [3_000_000, 3_500_000], 3
    res = r.result()
    assert res["server_rss_bytes"] == 3_500_000 and res["server_procs"] == 3
    assert res["rss_per_conn_bytes"] == 35_000 and res["rss_per_conn_delta_bytes"] == 25_000
    assert "PASS" in cli.summary(res) and "35,000 B per connection" in cli.summary(res)


@settings(max_examples=100)
@given(st.lists(st.integers(0, 400), max_size=8))
def test_the_parent_reads_reports_split_anywhere(cuts):
    msgs = [{"event": "up", "proc": 0},
            {"event": "progress", "established": 1, "verified": 0, "pings": 0, "failures": {}},
            {"event": "established", "t": 5.0, "established": 2},
            {"event": "done", "verified": 2}]
    stream = b"".join(json.dumps(m).encode() + b"\n" for m in msgs)
    r = fleet.Reports()
    for piece in filter(None, split(stream, cuts)):  # b"" is EOF; os.read gives none before
        r.feed(piece)
    assert r.up and r.settled and r.finished and not r.eof
    assert r.established == {"t": 5.0, "established": 2} and r.last == {"verified": 2}
    r.feed(b"")
    assert r.eof


def test_the_parent_marks_an_exit_without_a_report():
    r = fleet.Reports()
    r.feed(b'{"event": "up"}\nnot json\n{"event": "progr')
    assert r.up and not r.settled
    r.feed(b"")
    assert r.eof and r.settled and r.finished and r.done is None


# ------------------------------------------------------------------ usage

@pytest.mark.parametrize("args, needle", [
    (["--port", "9", "--conns", "0"], "--conns"),
    (["--port", "9", "--conns", "3", "--procs", "4"], "--procs 4 is more than --conns 3"),
    (["--conns", "5"], "--port"),
    (["--port", "9", "--conns", "50000", "--procs", "1"], "use more --procs"),
    (["--port", "9", "--conns", "5", "--rate", "-1"], "--rate"),
    (["--port", "9", "--conns", "5", "--hold", "soon"], "--hold"),
    (["--port", "9", "--conns", "5", "--connect-timeout", "0"], "--connect-timeout"),
    (["--port", "70000", "--conns", "5"], "--port"),
])
def test_bad_usage_is_one_line_and_exit_2(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(cli.resource, "getrlimit", lambda _: (20_000, 20_000))
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("scale.py: error:")
    assert needle in lines[0]
