"""procview against real processes: the fd zoo's own bookkeeping, /proc/PID/fd and ss must agree.

The zoo (fdzoo.py) reports what it built without reading /proc; each test compares a sample with
that report plus the three stdio fds the test hands it (stdin and stdout pipes, stderr a file).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pytest

from reactor.service import procview
from reactor.service.procview import NoPermission, ProcessGone, ProcessSampler

ZOO = Path(__file__).with_name("fdzoo.py")
STDIO_FDS = {"pipe": 2, "file": 1}                   # stdin, stdout pipes; stderr a log file
SS_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}


class Zoo:
    """A running fdzoo.py: its report, and commands over stdin answered by ``ok``."""

    def __init__(self, log: Path, args: tuple[str, ...], preexec: Callable[[], None] | None) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ZOO), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, preexec_fn=preexec,
        )
        self.report = json.loads(self._readline(timeout=60) or b"null")
        assert self.report, f"fd zoo did not start: {self.log_path.read_text()}"
        assert self.report["inherited_fds"] == 3

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str, timeout: float = 30.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._readline(timeout)
        assert reply == b"ok\n", f"{line!r} -> {reply!r}; stderr: {self.log_path.read_text()}"

    def expected_fds(self, extra_other: int = 0) -> dict[str, int]:
        fds = Counter(self.report["fds"]) + Counter(STDIO_FDS)
        fds["other"] += extra_other
        kinds = ("tcp", "tcp6", "udp", "udp6", "unix", "pipe", "file", "other")
        return {"total": sum(fds[k] for k in kinds), **{k: fds[k] for k in kinds}}

    def exit(self) -> None:
        """Ask the zoo to exit; it is left unreaped (a zombie) until ``proc.wait()``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"exit\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.exit()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._log):
            if f:
                f.close()

    def _readline(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"fd zoo silent for {timeout} s; stderr: {self.log_path.read_text()}")
        return self.proc.stdout.readline()


@pytest.fixture(autouse=True)
def proc_path(monkeypatch) -> None:
    """Every test reads /proc's tables unless it asks for sock_diag: the zoo's exact counts (a
    CLOSE socket among them) are the /proc path's, and another suite's load on the machine must
    not push the shared namespace over the threshold under them."""
    monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", 10**12)


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[Callable[..., Zoo]]:
    """``zoo(*args, preexec=None)`` starts fdzoo.py; all are stopped at the end."""
    started: list[Zoo] = []

    def start(*args: str, preexec: Callable[[], None] | None = None) -> Zoo:
        z = Zoo(tmp_path / f"zoo{len(started)}.log", args, preexec)
        started.append(z)
        return z

    yield start
    for z in started:
        z.stop()


def settled_sample(sampler: ProcessSampler, unowned: dict, timeout: float = 10.0) -> dict:
    """Sample until the ownerless entries are as expected (FIN_WAIT2 -> TIME_WAIT takes a moment).

    After the deadline, return the last sample anyway so the exact asserts show what differs.
    """
    deadline = time.monotonic() + timeout
    while True:
        sample = sampler.sample()
        if sample["unowned"] == unowned or time.monotonic() > deadline:
            return sample
        time.sleep(0.01)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def check_zoo(sample: dict, z: Zoo) -> None:
    """Every count exactly as the zoo made it, and in agreement with /proc and ss."""
    pid = z.pid
    assert sample["pid"] == pid
    assert "fdzoo.py" in sample["cmdline"] and len(sample["cmdline"]) <= 200
    assert sample["fds"] == z.expected_fds()
    assert sample["fds"]["total"] == len(os.listdir(f"/proc/{pid}/fd"))
    assert sample["tcp_states"] == z.report["tcp_states"]
    assert sample["unowned"] == z.report["unowned"]
    assert sample["listening"] == z.report["listening"]
    assert sample["rlimit_nofile"]["used"] == sample["fds"]["total"]
    assert sample["threads"] == 1
    json.dumps(sample)
    if shutil.which("ss"):
        check_against_ss(sample, z)


def check_against_ss(sample: dict, z: Zoo) -> None:
    """ss (inet_diag) sees the same TCP sockets by state, the same TIME_WAIT and unix listeners."""
    tag = f"pid={z.pid},"
    tcp = _ss("-Htanp")
    by_ss = Counter(SS_STATES[line.split()[0]] for line in tcp if tag in line)
    # A socket neither bound nor connected is in no kernel hash table: ss never lists it.
    ours = {state: n for state, n in sample["tcp_states"].items() if state != "CLOSE"}
    assert dict(by_ss) == ours
    port = z.report["port4"]
    time_wait = _ss("-Htan", "state", "time-wait", f"( sport = :{port} )")
    assert sum(line.split()[2] == f"127.0.0.1:{port}" for line in time_wait) \
        == sample["unowned"].get("TIME_WAIT", 0)
    unix_listeners = {f"unix:{line.split()[4]}" for line in _ss("-Hxlp") if tag in line}
    assert unix_listeners == {a for a in sample["listening"] if a.startswith("unix:")}


def _ss(*args: str) -> list[str]:
    out = subprocess.run(["ss", *args], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.splitlines()


# -- counts ------------------------------------------------------------------------------


def test_zoo_fds_states_unowned_and_listeners_are_exact(zoo):
    z = zoo("--pairs", "3")
    sample = settled_sample(ProcessSampler(z.pid), z.report["unowned"])
    assert z.report["tcp_states"]["ESTABLISHED"] >= 6
    assert z.report["unowned"] == {"TIME_WAIT": 1}
    check_zoo(sample, z)


def test_ipv6_parts_of_the_zoo_are_present_when_loopback_v6_works(zoo):
    z = zoo("--pairs", "0")
    if z.report["port6"] is None:
        pytest.skip("no IPv6 loopback")
    sample = ProcessSampler(z.pid).sample()
    assert sample["fds"]["tcp6"] == 3 and sample["fds"]["udp6"] == 1
    assert f"[::1]:{z.report['port6']}" in sample["listening"]


def test_ten_thousand_sockets_are_exact_and_sampled_well_under_a_second(zoo):
    z = zoo("--pairs", "5000", "--raise-nofile")
    sampler = ProcessSampler(z.pid)
    settled_sample(sampler, z.report["unowned"])
    started = time.perf_counter()
    sample = sampler.sample()
    elapsed_s = time.perf_counter() - started
    check_zoo(sample, z)
    assert sample["fds"]["tcp"] >= 10_000
    assert elapsed_s < 5.0, f"one sample of {sample['fds']['total']} fds took {elapsed_s:.2f} s"


def test_fds_vanishing_during_the_sample_are_skipped(zoo):
    z = zoo("--pairs", "0")
    sampler = ProcessSampler(z.pid)
    z.command("churn")
    for _ in range(50):
        sample = sampler.sample()
        parts = sum(n for kind, n in sample["fds"].items() if kind != "total")
        assert parts == sample["fds"]["total"]
        assert sample["threads"] == 2


# -- big namespaces: the sock_diag path ---------------------------------------------------------

# What the zoo does not build, in a helper of its own: connections left in a listener's accept
# queue (one whose peer has already closed: CLOSE_WAIT), a wildcard listener (dual-stack "::"
# reached over IPv4-mapped addresses when ::1 works, else 0.0.0.0), a TIME_WAIT on each listener, a
# held FIN_WAIT2/CLOSE_WAIT pair and a bound-only socket. It prints its own bookkeeping as one JSON
# line, then holds everything until stdin closes.
QUEUES = r"""
import json, socket, struct, sys
from collections import Counter

fds, states, unowned, listening, keep = Counter(), Counter(), Counter(), [], []

def hold(sock, kind, state):
    keep.append(sock); fds[kind] += 1; states[state] += 1

def kind(sock):
    return "tcp6" if sock.family == socket.AF_INET6 else "tcp"

def connect(addr):
    return socket.create_connection(addr, timeout=10)

def time_wait(lis, addr):
    client = connect(addr)
    server, _ = lis.accept()
    server.close()                    # the accepted side closes first: its TIME_WAIT has no owner
    client.settimeout(10)
    assert client.recv(1) == b""
    client.close()
    unowned["TIME_WAIT"] += 1

def listener(family, host):
    lis = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        lis.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lis.bind((host, 0))
    lis.listen(16)
    hold(lis, kind(lis), "LISTEN")
    port = lis.getsockname()[1]
    listening.append(f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")
    return lis, port

try:
    probe = socket.socket(socket.AF_INET6)
    probe.bind(("::1", 0))
    probe.close()
    v6 = True
except OSError:
    v6 = False

lis4, port4 = listener(socket.AF_INET, "127.0.0.1")
a4 = ("127.0.0.1", port4)
time_wait(lis4, a4)
client = connect(a4)
server, _ = lis4.accept()
client.shutdown(socket.SHUT_WR)
server.settimeout(10)
assert server.recv(1) == b""
hold(client, "tcp", "FIN_WAIT2")
hold(server, "tcp", "CLOSE_WAIT")
# Left in the accept queue: two held clients, and one that closes (its queued child: CLOSE_WAIT).
for _ in range(2):
    hold(connect(a4), "tcp", "ESTABLISHED")
    unowned["ESTABLISHED"] += 1
connect(a4).close()
unowned["CLOSE_WAIT"] += 1

lisw, portw = listener(*((socket.AF_INET6, "::") if v6 else (socket.AF_INET, "0.0.0.0")))
aw = ("127.0.0.1", portw)             # IPv4-mapped when the listener is "::"
client = connect(aw)
server, _ = lisw.accept()
hold(client, "tcp", "ESTABLISHED")
hold(server, kind(server), "ESTABLISHED")
time_wait(lisw, aw)
hold(connect(aw), "tcp", "ESTABLISHED")
unowned["ESTABLISHED"] += 1

if v6:
    lis6, port6 = listener(socket.AF_INET6, "::1")
    a6 = ("::1", port6)
    client = connect(a6)
    server, _ = lis6.accept()
    hold(client, "tcp6", "ESTABLISHED")
    hold(server, "tcp6", "ESTABLISHED")
    time_wait(lis6, a6)

bound = socket.socket()
bound.bind(("127.0.0.1", 0))
hold(bound, "tcp", "CLOSE")           # bound-only: in no /proc table
unbound = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
hold(unbound, kind(unbound), "CLOSE")

print(json.dumps({"v6": v6, "fds": fds, "tcp_states": states, "unowned": unowned,
                  "listening": sorted(listening)}), flush=True)
sys.stdin.read()
for sock in keep:                     # reset: exiting leaves no TIME_WAIT behind
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
"""


def loopback_v6() -> bool:
    """Whether this machine has an IPv6 loopback to bind (the zoo and QUEUES build their v6
    parts exactly then)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(params=["one walk", "per family"])
def diag_requests(request, monkeypatch) -> Callable[[], None]:
    """Which sock_diag requests the sampler sends. "one walk": as it comes (TCPDIAG_GETSOCK, both
    families in one dump); "per family": that request refused, as by a kernel that dropped it, so
    one SOCK_DIAG_BY_FAMILY dump per family is used instead. Returns a check that the sock_diag
    samples of the test sent exactly that.
    """
    sent: list[list[int]] = []
    real = procview._sock_diag_entries
    one_walk = request.param == "one walk"

    def entries(requests):
        kinds = [kind for kind, _ in requests]
        sent.append(kinds)
        if not one_walk and kinds == [procview._TCPDIAG_GETSOCK]:
            raise OSError(errno.EINVAL, "TCPDIAG_GETSOCK refused")
        return real(requests)

    def check() -> None:
        per_sample = ([[procview._TCPDIAG_GETSOCK]] if one_walk else
                      [[procview._TCPDIAG_GETSOCK], [procview._SOCK_DIAG_BY_FAMILY] * 2])
        assert sent and sent == per_sample * (len(sent) // len(per_sample)), sent

    monkeypatch.setattr(procview, "_sock_diag_entries", entries)
    return check


def both_paths(sampler: ProcessSampler, monkeypatch, unowned: dict) -> tuple[dict, dict]:
    """A settled sample on the /proc path, one on the sock_diag path, then /proc again, which must
    show the same sockets as the first: nothing changed in between, so the two paths can be
    compared count for count.
    """
    keys = ("fds", "tcp_states", "unowned", "listening")
    deadline = time.monotonic() + 20
    while True:
        monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", 10**12)
        proc = settled_sample(sampler, unowned)
        monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", 0)
        diag = settled_sample(sampler, unowned)
        monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", 10**12)
        again = sampler.sample()
        # A socket of the zoo still closing (a FIN_WAIT2 turning into TIME_WAIT) moved between
        # the samples: take all three again, until nothing moved or the deadline passes.
        if all(again[k] == proc[k] for k in keys) or time.monotonic() > deadline:
            break
    for key in keys:
        assert again[key] == proc[key], key
    assert (proc["tcp_source"], diag["tcp_source"]) == ("proc", "sock_diag")
    return proc, diag


def as_sock_diag_counts(states: dict) -> dict:
    """The /proc path's TCP states as the sock_diag path reports them: a socket in no table
    (unbound, or bound only: CLOSE) is not in the dump either, so it counts as ESTABLISHED."""
    diag = dict(states)
    closed = diag.pop("CLOSE", 0)
    if closed:
        diag["ESTABLISHED"] = diag.get("ESTABLISHED", 0) + closed
    return {name: diag[name] for name in procview.TCP_STATES if diag.get(name)}


def test_sock_diag_and_proc_paths_agree_on_the_zoo(zoo, monkeypatch, diag_requests):
    z = zoo("--pairs", "3")
    proc, diag = both_paths(ProcessSampler(z.pid), monkeypatch, z.report["unowned"])
    check_zoo(proc, z)
    assert z.report["unowned"] == {"TIME_WAIT": 1}
    assert z.report["tcp_states"]["CLOSE"] == 1
    for key in ("fds", "unowned", "listening", "rlimit_nofile"):
        assert diag[key] == proc[key], key
    assert diag["tcp_states"] == as_sock_diag_counts(z.report["tcp_states"])
    assert diag["tcp_states"]["ESTABLISHED"] == z.report["tcp_states"]["ESTABLISHED"] + 1
    # The machine's IPv6, whichever it is: the zoo builds its tcp6 part exactly when ::1 binds.
    port6 = z.report["port6"]
    assert (port6 is not None) is loopback_v6()
    assert diag["fds"]["tcp6"] == (3 if port6 else 0)
    assert (f"[::1]:{port6}" in diag["listening"]) is bool(port6)
    diag_requests()


def test_sock_diag_counts_accept_queues_wildcards_and_time_waits_like_proc(monkeypatch,
                                                                         diag_requests, tmp_path):
    with open(tmp_path / "queues.log", "wb") as log:
        helper = subprocess.Popen([sys.executable, "-c", QUEUES], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log)
    try:
        ready, _, _ = select.select([helper.stdout], [], [], 60)
        assert ready, (tmp_path / "queues.log").read_text()
        report = json.loads(helper.stdout.readline() or b"null")
        assert report, (tmp_path / "queues.log").read_text()
        v6 = loopback_v6()
        assert report["v6"] is v6
        assert report["unowned"] == {"TIME_WAIT": 3 if v6 else 2, "ESTABLISHED": 3, "CLOSE_WAIT": 1}
        proc, diag = both_paths(ProcessSampler(helper.pid), monkeypatch, report["unowned"])
        for sample in (proc, diag):
            assert sample["unowned"] == report["unowned"]
            assert sample["listening"] == report["listening"]
            assert {k: sample["fds"][k] for k in report["fds"]} == report["fds"]
            assert sample["fds"] == proc["fds"]
        assert proc["tcp_states"] == report["tcp_states"]
        assert diag["tcp_states"] == as_sock_diag_counts(report["tcp_states"])
        diag_requests()
    finally:
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.close()
        helper.wait(20)
        helper.stdout.close()


@pytest.mark.parametrize("err", [errno.EPERM, errno.EPROTONOSUPPORT, errno.EACCES])
def test_netlink_refused_falls_back_to_the_proc_path(zoo, monkeypatch, err):
    def refused() -> socket.socket:
        raise OSError(err, os.strerror(err))   # EPERM/EACCES: a PermissionError, not NoPermission

    monkeypatch.setattr(procview, "_open_sock_diag", refused)
    monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", 0)
    z = zoo("--pairs", "2")
    sample = settled_sample(ProcessSampler(z.pid), z.report["unowned"])
    assert sample["tcp_source"] == "proc"
    check_zoo(sample, z)                       # exact, its CLOSE socket included


# Unshares its network namespace (root, or CAP_SYS_ADMIN), listens there, reports, waits.
OTHER_NETNS = r"""
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:              # CLONE_NEWNET
    print(json.dumps({"error": os.strerror(ctypes.get_errno())}), flush=True)
    sys.exit(0)
lis = socket.socket()
lis.bind(("0.0.0.0", 0))                       # its lo is down; a wildcard bind needs no address
lis.listen(4)
print(json.dumps({"port": lis.getsockname()[1]}), flush=True)
sys.stdin.read()
"""


def test_a_process_in_another_network_namespace_is_read_from_proc(monkeypatch):
    def not_here() -> socket.socket:
        raise AssertionError("a netlink socket here would dump the sampler's namespace")

    monkeypatch.setattr(procview, "_open_sock_diag", not_here)
    monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", -1)     # even an empty namespace is "big"
    helper = subprocess.Popen([sys.executable, "-c", OTHER_NETNS], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([helper.stdout], [], [], 30)
        assert ready, "the namespace helper did not answer"
        report = json.loads(helper.stdout.readline())
        if "error" in report:
            pytest.skip(f"cannot unshare a network namespace here: {report['error']}")
        assert not procview._same_netns(helper.pid) and procview._same_netns(os.getpid())
        sample = ProcessSampler(helper.pid).sample()
        assert sample["tcp_source"] == "proc"
        assert sample["tcp_states"] == {"LISTEN": 1}
        assert sample["listening"] == [f"0.0.0.0:{report['port']}"]
    finally:
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.close()
        helper.wait(20)
        helper.stdout.close()


# -- limits and usage ----------------------------------------------------------------------


@pytest.mark.parametrize("soft, targets", [(100, (80, 81)), (64, (40, 52))])
def test_rlimit_nofile_headroom_and_warning(zoo, soft, targets):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    z = zoo("--pairs", "2",
            preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    sampler = ProcessSampler(z.pid)
    used = len(os.listdir(f"/proc/{z.pid}/fd"))
    assert sampler.sample()["rlimit_nofile"] == {
        "soft": soft, "hard": hard, "used": used, "headroom": soft - used,
        "used_pct": round(100 * used / soft, 1), "warning": False,
    }
    for target in targets:
        z.command(f"open {target - used}")
        used = target
        limit = sampler.sample()["rlimit_nofile"]
        assert limit["used"] == target == len(os.listdir(f"/proc/{z.pid}/fd"))
        assert limit["headroom"] == soft - target
        assert limit["used_pct"] == round(100 * target / soft, 1)
        assert limit["warning"] is (100 * target / soft > 80)
    assert limit["warning"] is True      # the last target of each case is past 80 %


def test_rss_growth_and_cpu_percent(zoo):
    z = zoo("--pairs", "0")
    z.command("spin 0.3")               # CPU before the sampler exists counts in no sample
    sampler = ProcessSampler(z.pid)
    idle = sampler.sample()
    assert idle["cpu_percent"] <= 8.0   # two clock ticks over 0.25 s: the zoo sat waiting
    assert idle["rss_growth_bytes"] == 0
    assert idle["rss_bytes"] > 1 << 20
    before = time.monotonic()
    z.command("spin 0.3")
    first = sampler.sample()
    window_s = time.monotonic() - before
    # Since the previous sample: it spun 0.3 s of CPU within window_s.
    assert 0.3 <= first["cpu_interval_s"] <= window_s + 0.01
    assert 100 * 0.3 / window_s * 0.8 <= first["cpu_percent"] <= 110

    z.command(f"alloc {50_000_000}")
    grown = sampler.sample()
    assert 45_000_000 <= grown["rss_growth_bytes"] <= 80_000_000
    assert grown["rss_growth_bytes"] == grown["rss_bytes"] - first["rss_bytes"]

    before = time.monotonic()
    sampler.sample()
    z.command("spin 0.5")
    busy = sampler.sample()
    window_s = time.monotonic() - before
    assert 100 * 0.5 / window_s * 0.8 <= busy["cpu_percent"] <= 110
    assert busy["threads"] == 1


def test_cpu_percent_is_over_at_least_the_interval_asked_for(zoo):
    z = zoo("--pairs", "0")
    sampler = ProcessSampler(z.pid, cpu_interval_s=0.4)
    for _ in range(2):                   # the first sample (from the constructor), then the next
        before = time.monotonic()
        sample = sampler.sample()
        took_s = time.monotonic() - before
        assert 0.4 <= sample["cpu_interval_s"] <= 0.4 + took_s
        assert took_s >= 0.4 - 0.05      # it waited out the interval (the constructor ran before)
    now = ProcessSampler(z.pid, cpu_interval_s=0)
    before = time.monotonic()
    now.sample()
    assert time.monotonic() - before < 0.4   # 0: no wait, whatever interval has passed
    with pytest.raises(ValueError, match="cpu_interval_s"):
        ProcessSampler(z.pid, cpu_interval_s=-1)


# -- errors --------------------------------------------------------------------------------


def test_a_pid_that_does_not_exist_is_process_gone():
    with open("/proc/sys/kernel/pid_max") as f:
        never = int(f.read())                      # PIDs are always below pid_max
    with pytest.raises(ProcessGone, match=f"^no process with PID {never}$"):
        ProcessSampler(never)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessGone, match=f"PID {child.pid}"):
        ProcessSampler(child.pid)


def test_a_process_that_exits_between_samples_is_process_gone(zoo):
    z = zoo("--pairs", "1")
    sampler = ProcessSampler(z.pid)
    sampler.sample()
    z.exit()
    wait_until(lambda: proc_state(z.pid) == "Z", "the zoo to exit (unreaped)")
    with pytest.raises(ProcessGone, match=r"exited \(zombie\)"):
        sampler.sample()
    with pytest.raises(ProcessGone):
        ProcessSampler(z.pid)
    z.proc.wait(10)
    with pytest.raises(ProcessGone, match=f"no process with PID {z.pid}"):
        sampler.sample()


def test_a_reused_pid_is_process_gone_not_another_process(zoo):
    z = zoo("--pairs", "0")
    sampler = ProcessSampler(z.pid)
    sampler._create_time += 1          # as if the PID had been reused by a later process
    with pytest.raises(ProcessGone, match="now belongs to"):
        sampler.sample()


def test_bad_pids_are_api_misuse():
    for pid in (0, -3):
        with pytest.raises(ValueError, match=str(pid)):
            ProcessSampler(pid)
    for pid in ("123", 1.0, True):
        with pytest.raises(TypeError):
            ProcessSampler(pid)  # type: ignore[arg-type]


def test_another_users_process_is_no_permission():
    """Root can read everyone's fds, so drop to nobody in a forked child and sample this root process."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a sampler as another uid")
    target = os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:                                 # pragma: no cover - runs in the child only
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result: dict = {"own": ProcessSampler(os.getpid()).sample()["fds"]["total"]}
            try:
                ProcessSampler(target)
                result["other"] = "no error"
            except NoPermission as exc:
                result["other"] = f"NoPermission: {exc}"
            os.write(write_end, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    result = json.loads(out)
    assert result["own"] > 0                       # the same user may read its own process
    message = result["other"]
    assert message.startswith("NoPermission: permission denied reading /proc/"), message
    assert f"PID {target}" in message and "uid 0" in message and "root" in message
    assert "\n" not in message and re.search(r"run as .* or as root", message)
