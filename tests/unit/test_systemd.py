"""reactor/service/systemd.py against real sockets: notifications as systemd would receive them
(a datagram socket at a path and at an abstract name), watchdog parsing, socket activation in a
child process given fds 3 and 4 the way systemd gives them, and SystemdLink on a FakeClock."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from handlers.line import LineCodec
from reactor import FakeClock, Handler, Loop
from reactor.service.systemd import (Activation, MAX_MESSAGE_BYTES, Notifier, SystemdLink,
                                     listen_fds, watchdog_interval_s)

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """What systemd's side of NOTIFY_SOCKET sees: one unix datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def take(self) -> list[bytes]:
        """Every datagram queued now. A unix datagram is in the receiver's queue when
        sendto returns, so no wait is needed (or hoped for)."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(65536))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir():
    # Not tmp_path: a unix socket path must fit in 108 bytes, and pytest's can be longer.
    path = tempfile.mkdtemp(prefix="sd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir):
    path = os.path.join(short_dir, "notify")
    rx = Receiver(path)
    rx.path = path
    yield rx
    rx.close()


# ------------------------------------------------------------------ notifications

def test_no_notify_socket_means_no_notifier():
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}) is None


@pytest.mark.parametrize("value", ["relative/notify", "@", "/" + "x" * 200, "vsock:2:1234"])
def test_an_unusable_notify_socket_is_warned_about_and_ignored(value, caplog):
    with caplog.at_level(logging.WARNING, logger="reactor"):
        assert Notifier.from_environ({"NOTIFY_SOCKET": value}) is None
    assert [r.getMessage() for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]
    with pytest.raises(ValueError):
        Notifier(value)


def test_from_environ_unsets_only_when_asked(receiver):
    env = {"NOTIFY_SOCKET": receiver.path}
    assert Notifier.from_environ(env) is not None and "NOTIFY_SOCKET" in env
    assert Notifier.from_environ(env, unset=True) is not None and env == {}


def test_each_message_is_one_datagram_of_exact_assignments(receiver):
    n = Notifier.from_environ({"NOTIFY_SOCKET": receiver.path})
    assert n is not None
    assert n.ready()
    assert n.ready(status="serving 0 connections")
    assert n.status("12 connections")
    assert n.stopping()
    assert n.watchdog()
    assert n.send(MAINPID=4242, ERRNO=5)
    assert n.send("EXTEND_TIMEOUT_USEC=5000000\n")
    assert n.send("RELOADING=1\nSTATUS=reloading", MONOTONIC_USEC=17)
    assert receiver.take() == [
        b"READY=1",
        b"READY=1\nSTATUS=serving 0 connections",
        b"STATUS=12 connections",
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"MAINPID=4242\nERRNO=5",
        b"EXTEND_TIMEOUT_USEC=5000000",
        b"RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=17",
    ]
    assert n.stats().sent_total == 8 and n.stats().failed_total == 0
    n.close()


def test_an_abstract_name_gets_a_nul_for_its_at_sign():
    name = f"reactor-test-{secrets.token_hex(8)}"
    rx = Receiver("\0" + name)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n is not None and n.ready(status="up")
        assert rx.take() == [b"READY=1\nSTATUS=up"]
        n.close()
    finally:
        rx.close()


@pytest.mark.parametrize("call, error", [
    (lambda n: n.status("ok\nREADY=1"), ValueError),
    (lambda n: n.ready(status="up\n"), ValueError),
    (lambda n: n.send(STATUS="a\0b"), ValueError),
    (lambda n: n.send("READY=1\nWATCHDOG"), ValueError),
    (lambda n: n.send("status=lowercase"), ValueError),
    (lambda n: n.send(ready=1), ValueError),
    (lambda n: n.send(), ValueError),
    (lambda n: n.send(READY=True), TypeError),
    (lambda n: n.send(STATUS=1.5), TypeError),
    (lambda n: n.status("x" * MAX_MESSAGE_BYTES), ValueError),
])
def test_misuse_raises_and_sends_nothing(receiver, call, error):
    n = Notifier(receiver.path)
    with pytest.raises(error):
        call(n)
    assert receiver.take() == []
    assert n.stats().sent_total == 0 and n.stats().failed_total == 0
    n.close()


def test_a_send_to_a_socket_that_went_away_is_counted_and_logged_once_per_outage(
        short_dir, caplog):
    path = os.path.join(short_dir, "notify")
    rx = Receiver(path)
    n = Notifier(path)
    assert n.ready()
    rx.close()
    os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="reactor"):
        assert n.watchdog() is False
        assert n.watchdog() is False
        assert n.status("still here") is False
    warnings = [r for r in caplog.records if "systemd notification" in r.getMessage()]
    assert len(warnings) == 1 and path in warnings[0].getMessage()
    s = n.stats()
    assert (s.sent_total, s.failed_total) == (1, 3) and s.last_error
    rx = Receiver(path)  # systemd is back (e.g. after daemon-reexec)
    assert n.watchdog() and rx.take() == [b"WATCHDOG=1"]
    rx.close()
    os.unlink(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reactor"):
        assert n.watchdog() is False
    assert len([r for r in caplog.records if "systemd notification" in r.getMessage()]) == 1
    n.close()
    assert n.ready() is False and n.stats().failed_total == 5


# ------------------------------------------------------------------ watchdog

@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "1500"}, 0.0015),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{me}"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
])
def test_watchdog_interval_is_read_for_this_process_only(env, expected, caplog):
    me = os.getpid()
    env = {k: v.format(me=me, other=me + 1) for k, v in env.items()}
    with caplog.at_level(logging.WARNING, logger="reactor"):
        assert watchdog_interval_s(env) == expected
    assert caplog.records == []  # none of these is malformed


@pytest.mark.parametrize("env", [
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "30s"},
    {"WATCHDOG_USEC": " 30"},
    {"WATCHDOG_USEC": str(2 ** 64 - 1)},  # USEC_INFINITY
    {"WATCHDOG_USEC": "9" * 5000},  # more digits than int() will parse
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
])
def test_a_malformed_watchdog_value_is_warned_about_and_ignored(env, caplog):
    with caplog.at_level(logging.WARNING, logger="reactor"):
        assert watchdog_interval_s(env) is None
    assert len(caplog.records) == 1 and "watchdog" in caplog.records[0].getMessage()


def test_watchdog_unset_removes_both_variables():
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
    assert watchdog_interval_s(env, unset=True) == 2.0
    assert env == {"OTHER": "1"}


# ------------------------------------------------------------------ socket activation

@pytest.mark.parametrize("env, status, reason", [
    ({}, Activation.NOT_ACTIVATED, "LISTEN_PID and LISTEN_FDS not set"),
    ({"LISTEN_PID": "{me}"}, Activation.NOT_ACTIVATED, "LISTEN_FDS not set"),
    ({"LISTEN_PID": "{other}", "LISTEN_FDS": "2"}, Activation.OTHER_PROCESS, "is not this process"),
    ({"LISTEN_PID": "x12", "LISTEN_FDS": "2"}, Activation.MALFORMED, "is not a process id"),
    ({"LISTEN_PID": "{me}", "LISTEN_FDS": "two"}, Activation.MALFORMED, "not a positive count"),
    ({"LISTEN_PID": "{me}", "LISTEN_FDS": "-1"}, Activation.MALFORMED, "not a positive count"),
    ({"LISTEN_PID": "{me}", "LISTEN_FDS": "0"}, Activation.MALFORMED, "not a positive count"),
    ({"LISTEN_PID": "{me}", "LISTEN_FDS": "99999999999"}, Activation.MALFORMED, "fd limit"),
])
def test_listen_fds_without_usable_fds_is_empty_with_a_reason(env, status, reason, caplog):
    # Each case is refused before any fd is looked at, so this runs in the test process.
    me = os.getpid()
    env = {k: v.format(me=me, other=me + 1) for k, v in env.items()}
    env["LISTEN_FDNAMES"] = "line-echo"
    kept = dict(env)
    with caplog.at_level(logging.WARNING, logger="reactor"):
        got = listen_fds(kept, unset=False)
    assert got == [] and got.status is status and reason in got.reason
    assert "\n" not in got.reason
    assert kept == env  # unset=False leaves the environment alone
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ([] if status is Activation.NOT_ACTIVATED
                      else [f"socket activation ignored: {got.reason}"])
    assert listen_fds(env).status is status and env == {}  # unset=True, whatever the outcome


CHILD = r"""
import json, os, subprocess, sys
a, b, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
# Put the passed sockets at 3 and 4, as systemd does (through fds out of the way first).
os.dup2(a, 100); os.dup2(b, 101); os.close(a); os.close(b)
os.dup2(100, 3); os.dup2(101, 4); os.close(100); os.close(101)
if mode == "gap":
    try:
        os.close(5)
    except OSError:
        pass
os.environ["LISTEN_PID"] = str(os.getpid() + (1 if mode == "other" else 0))
os.environ["LISTEN_FDS"] = "3" if mode == "gap" else "2"
from reactor.service.systemd import listen_fds
got = listen_fds()

def inheritable(fd):
    try:
        return os.get_inheritable(fd)
    except OSError:
        return "closed"

report = {
    "status": got.status.name, "reason": got.reason,
    "fds": [{"fd": s.fd, "name": s.name, "family": s.family.name, "kind": s.kind.name,
             "listening": s.is_listening, "inheritable": inheritable(s.fd)} for s in got],
    "named": [s.fd for s in got.named("line-echo")],
    "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    # What a process we start sees: unset must reach the real environment (unsetenv).
    "grandchild_env": subprocess.run(
        [sys.executable, "-c",
         "import os; print(','.join(sorted(k for k in os.environ if k.startswith('LISTEN_'))))"],
        capture_output=True, text=True, check=True).stdout.strip(),
    "fd3": inheritable(3), "fd4": inheritable(4),
}
if mode == "ok":  # the inherited listener is a real one: accept the connection queued on it
    got[0].socket.settimeout(10)
    conn, _ = got[0].socket.accept()
    conn.sendall(b"accepted by the child\n")
    conn.close()
print(json.dumps(report))
"""


def _run_child(mode: str) -> tuple[dict, bytes]:
    listener = socket.create_server(("127.0.0.1", 0))
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket that is not listening
    client = socket.create_connection(listener.getsockname(), timeout=10)
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env["PYTHONPATH"] = str(ROOT)
        env["LISTEN_FDNAMES"] = "line-echo"  # one name for two fds: the second is "unknown"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(listener.fileno()), str(other.fileno()), mode],
            pass_fds=(listener.fileno(), other.fileno()), env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        reply = b""
        if mode == "ok":
            while not reply.endswith(b"\n"):
                chunk = client.recv(100)
                if not chunk:
                    break
                reply += chunk
        return json.loads(out.stdout), reply
    finally:
        for s in (client, listener, other):
            s.close()


def test_listen_fds_takes_fds_3_and_4_in_a_socket_activated_child():
    report, reply = _run_child("ok")
    assert report["status"] == "ACTIVATED" and report["reason"] == ""
    assert report["fds"] == [
        {"fd": 3, "name": "line-echo", "family": "AF_INET", "kind": "SOCK_STREAM",
         "listening": True, "inheritable": False},
        {"fd": 4, "name": "unknown", "family": "AF_UNIX", "kind": "SOCK_STREAM",
         "listening": False, "inheritable": False},
    ]
    assert report["named"] == [3]
    assert report["env_left"] == [] and report["grandchild_env"] == ""
    assert reply == b"accepted by the child\n"


def test_a_listen_pid_for_another_process_yields_nothing_and_leaves_the_fds_alone():
    report, _ = _run_child("other")
    assert report["status"] == "OTHER_PROCESS" and report["fds"] == []
    assert "is not this process" in report["reason"]
    assert report["fd3"] is True and report["fd4"] is True  # still open, still inheritable
    assert report["env_left"] == [] and report["grandchild_env"] == ""


def test_a_count_beyond_the_open_fds_yields_nothing():
    report, _ = _run_child("gap")
    assert report["status"] == "MALFORMED" and report["fds"] == []
    assert report["reason"] == "LISTEN_FDS=3 but fd 5 is not open"
    assert report["fd3"] is True and report["fd4"] is True


# ------------------------------------------------------------------ SystemdLink

@pytest.fixture
def fake_loop():
    clock = FakeClock(100.0)
    loop = Loop(clock=clock, pool_chunks=16, raise_fd_limit=False)
    loop.clock = clock  # the test's handle on it
    yield loop
    loop.close()


def _run_until(loop, receiver, until_s: float, step_s: float = 0.25) -> list[tuple[float, bytes]]:
    """Advance the fake clock in steps up to ``until_s``, one loop iteration per step; return
    (time, datagram) for every notification sent."""
    seen = []
    while loop.time() < until_s:
        loop.clock.advance(step_s)
        loop.run_once(0)
        seen += [(loop.time(), d) for d in receiver.take()]
    return seen


def test_the_link_pings_the_watchdog_at_half_its_interval(fake_loop, receiver):
    link = SystemdLink(fake_loop, Notifier(receiver.path), watchdog_interval_s=10.0)
    assert link.watchdog_every_s == 5.0
    assert fake_loop.stats()["timers"]["entries"] == 1
    seen = _run_until(fake_loop, receiver, 121.5)
    assert [d for _, d in seen] == [b"WATCHDOG=1"] * 4
    times = [100.0] + [t for t, _ in seen]
    for before, t in zip(times, times[1:]):
        assert 5.0 <= t - before <= 5.25  # never early; late by at most one step
    link.close()
    assert fake_loop.stats()["timers"]["entries"] == 0
    assert _run_until(fake_loop, receiver, 141.0) == []


def test_a_stalled_loop_skips_missed_pings_instead_of_bursting(fake_loop, receiver):
    link = SystemdLink(fake_loop, Notifier(receiver.path), watchdog_interval_s=2.0)
    fake_loop.clock.advance(10.0)  # the loop was stuck for ten periods
    fake_loop.run_once(0)
    assert receiver.take() == [b"WATCHDOG=1"]
    seen = _run_until(fake_loop, receiver, 112.1, step_s=0.1)
    assert [d for _, d in seen] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    link.close()


def test_the_link_posts_status_lines_from_its_callable(fake_loop, receiver):
    count = [0]
    link = SystemdLink(fake_loop, Notifier(receiver.path), status_every_s=3.0,
                       status=lambda: f"{count[0]} connections\nsecond line")
    assert link.ready()
    assert receiver.take() == [b"READY=1\nSTATUS=0 connections second line"]
    count[0] = 7
    seen = _run_until(fake_loop, receiver, 103.1)
    assert [d for _, d in seen] == [b"STATUS=7 connections second line"]
    assert 103.0 <= seen[0][0] <= 103.25
    count[0] = 8
    assert [d for _, d in _run_until(fake_loop, receiver, 106.1)] == [
        b"STATUS=8 connections second line"]
    assert link.stopping() and link.stopping(status="draining")
    assert receiver.take() == [b"STOPPING=1", b"STOPPING=1\nSTATUS=draining"]
    link.close()
    assert _run_until(fake_loop, receiver, 120.0) == []


def test_a_failing_status_callable_is_logged_once_and_the_watchdog_goes_on(
        fake_loop, receiver, caplog):
    def broken():
        raise RuntimeError("no count")

    link = SystemdLink(fake_loop, Notifier(receiver.path), watchdog_interval_s=2.0,
                       status=broken, status_every_s=1.0)
    with caplog.at_level(logging.ERROR, logger="reactor"):
        seen = _run_until(fake_loop, receiver, 104.1)
        assert link.ready()
    assert [d for _, d in seen] == [b"WATCHDOG=1"] * 4  # every second, no STATUS
    assert receiver.take() == [b"READY=1"]
    assert len([r for r in caplog.records if "status callable" in r.getMessage()]) == 1
    link.close()


def test_without_a_notifier_the_link_does_nothing(fake_loop):
    link = SystemdLink(fake_loop, None, watchdog_interval_s=10.0, status=lambda: "x")
    assert link.watchdog_every_s is None and link.status_every_s == 0
    assert link.ready() is False and link.stopping() is False
    assert fake_loop.stats()["timers"]["entries"] == 0  # no timer armed
    link.close()


def test_from_environ_builds_a_link_that_owns_its_notifier(fake_loop, receiver):
    env = {"NOTIFY_SOCKET": receiver.path, "WATCHDOG_USEC": "4000000"}
    link = SystemdLink.from_environ(fake_loop, env, status=lambda: "up", status_every_s=0)
    assert link.watchdog_every_s == 2.0 and link.status_every_s == 0
    assert link.ready() and receiver.take() == [b"READY=1\nSTATUS=up"]
    link.close()
    assert link.notifier is not None and link.notifier.ready() is False  # closed with it
    assert SystemdLink.from_environ(fake_loop, {}).ready() is False


@pytest.mark.parametrize("kwargs", [{"watchdog_interval_s": 0}, {"watchdog_interval_s": -1},
                                    {"watchdog_interval_s": float("inf")},
                                    {"status_every_s": -1}, {"status_every_s": float("nan")}])
def test_bad_periods_are_refused(fake_loop, kwargs):
    with pytest.raises(ValueError):
        SystemdLink(fake_loop, None, **kwargs)


def test_the_link_does_not_hold_shutdown_and_pings_through_a_drain(receiver):
    clock = FakeClock(0.0)
    loop = Loop(clock=clock, pool_chunks=16, raise_fd_limit=False)
    loop.clock = clock
    a, b = socket.socketpair()
    try:
        link = SystemdLink(loop, Notifier(receiver.path), watchdog_interval_s=10.0,
                           status=lambda: f"{loop.connection_count} connections",
                           status_every_s=5.0)
        loop.adopt(a, Handler(), LineCodec(), linger_s=60.0)  # waits for the peer's FIN
        loop.shutdown(60.0)
        assert link.stopping() and receiver.take() == [b"STOPPING=1"]
        # Draining: the peer has not closed, so the connection stays, and so must the pings.
        seen = _run_until(loop, receiver, 5.1)
        assert loop.connection_count == 1
        assert sorted(d for _, d in seen) == [b"STATUS=1 connections", b"WATCHDOG=1"]
        b.close()
        # The last connection goes: shutdown stops the loop though the link's timers are
        # pending. run() in a thread, so that a hang fails the test instead of hanging it.
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        thread.join(10.0)
        assert not thread.is_alive(), "Loop.run() did not return after shutdown"
        assert loop.connection_count == 0
        link.close()
    finally:
        b.close()
        loop.close()
