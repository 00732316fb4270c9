"""procview's sock_diag path in pieces: the size check, the choice of path, the netlink reply
parser (fed crafted datagrams by a fake socket) and the real kernel's dump against /proc for
sockets made here. The whole path against the /proc path on real processes is in
tests/integration/test_procview.py.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Callable

import pytest

from reactor.service import procview
from reactor.service.procview import ProcessSampler
from tests.conftest import wait_for

NLMSG = struct.Struct("=IHHII")
NLMSG_NOOP = 1
MULTI = 0x2                                   # NLM_F_MULTI: every part of a dump carries it


def nlmsg(kind: int, seq: int, payload: bytes, length: int | None = None) -> bytes:
    """One netlink message, padded to 4 bytes; ``length`` overrides the header's (to lie)."""
    size = NLMSG.size + len(payload)
    return NLMSG.pack(size if length is None else length, kind, MULTI, seq, 0) + payload \
        + b"\0" * (-size % 4)


def diag(family: int, state: int, addr: str, port: int, inode: int, rqueue: int = 0) -> bytes:
    """An inet_diag_msg, followed by a 5-byte attribute as the kernel adds (INET_DIAG_SHUTDOWN),
    so the message's length is not a multiple of 4."""
    src = socket.inet_pton(family, addr).ljust(16, b"\0")
    head = struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH", port, 54321)
    tail = struct.pack("=IIIII", 0, rqueue, 0, 0, inode)
    return head + src + bytes(16) + bytes(12) + tail + struct.pack("=HH", 5, 8) + b"\0"


def done(seq: int, code: int = 0) -> bytes:
    return nlmsg(3, seq, struct.pack("=i", code))


def error(seq: int, code: int) -> bytes:
    return nlmsg(2, seq, struct.pack("=i", code) + NLMSG.pack(0, 0, 0, seq, 0))


class FakeNetlink:
    """Stands in for the NETLINK_SOCK_DIAG socket: each request sent is answered with the
    datagrams ``answer(kind, request, seq)`` returns; recv_into acts as netlink's with MSG_TRUNC
    (a datagram bigger than the buffer is cut, and its full length returned)."""

    def __init__(self, answer: Callable[[int, bytes, int], list[bytes]], log: list) -> None:
        self.answer, self.log, self.pending = answer, log, []

    def settimeout(self, timeout: float) -> None:
        assert 0 < timeout <= 10

    def send(self, data: bytes) -> int:
        length, kind, flags, seq, _ = NLMSG.unpack_from(data)
        assert length == len(data)
        self.log.append((kind, flags, seq, data[NLMSG.size:]))
        self.pending.extend(self.answer(kind, data[NLMSG.size:], seq))
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        assert flags & socket.MSG_TRUNC and nbytes == 0
        data = self.pending.pop(0)
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        return len(data)

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def netlink(monkeypatch) -> Callable[..., list]:
    """``netlink(answer)`` makes every sock_diag socket a FakeNetlink; returns the requests log."""
    def install(answer: Callable[[int, bytes, int], list[bytes]]) -> list:
        log: list = []
        monkeypatch.setattr(procview, "_open_sock_diag", lambda: FakeNetlink(answer, log))
        return log
    return install


def shown(local_hex: str) -> str:
    return procview._format_inet(local_hex)


# -- the reply parser ----------------------------------------------------------------------------


def test_a_dump_over_several_datagrams_is_read_whole(netlink):
    def answer(kind: int, request: bytes, seq: int) -> list[bytes]:
        assert kind == procview._TCPDIAG_GETSOCK
        one = (nlmsg(NLMSG_NOOP, seq, b"")
               + nlmsg(kind, seq, diag(socket.AF_INET, 10, "127.0.0.1", 9000, 11, rqueue=3))
               + nlmsg(kind, seq + 100, diag(socket.AF_INET, 10, "127.0.0.1", 1, 99))   # stale
               + nlmsg(kind, seq, diag(socket.AF_INET6, 8, "::1", 443, 12)))
        two = (nlmsg(kind, seq, diag(socket.AF_INET6, 6, "::1", 443, 0))
               + nlmsg(kind, seq, diag(socket.AF_INET, 8, "127.0.0.1", 9000, 0))
               + nlmsg(kind, seq, bytes([socket.AF_UNIX])                     # not inet
                       + diag(socket.AF_INET, 1, "127.0.0.1", 1, 98)[1:])
               + done(seq))
        return [one, two]

    log = netlink(answer)
    owned, unowned = procview._read_sock_diag_tcp()
    assert {inode: (t, st, shown(local)) for inode, (t, st, local) in owned.items()} == {
        "11": ("tcp", "0A", "127.0.0.1:9000"), "12": ("tcp6", "08", "[::1]:443")}
    # The listener's 3 queued connections, one of which (the peer closed) is listed as CLOSE_WAIT.
    assert [(t, st, shown(local)) for t, st, local in unowned] == [
        ("tcp6", "06", "[::1]:443"), ("tcp", "08", "127.0.0.1:9000"),
        ("tcp", "01", "127.0.0.1:9000"), ("tcp", "01", "127.0.0.1:9000")]
    [(kind, flags, seq, request)] = log
    assert flags == 0x1 | 0x300                          # NLM_F_REQUEST | NLM_F_DUMP
    family, _, _, ext, states, dbs = struct.unpack("=BBBB48xII", request)
    assert (ext, dbs) == (0, 0)
    # Every state but ESTABLISHED (bit 1): CLOSE .. CLOSING, SYN_RECV and TIME_WAIT among them.
    assert states == sum(1 << code for code in range(2, len(procview.TCP_STATES) + 1))


def test_hex_addresses_are_procs_own(netlink):
    """The dump's addresses come out as /proc/net/tcp prints them, so /proc's matching applies."""
    with socket.socket() as lis:
        lis.bind(("127.0.0.1", 0))
        lis.listen(1)
        inode, port = str(os.fstat(lis.fileno()).st_ino), lis.getsockname()[1]
        from_proc = procview._read_inet_tables(os.getpid(), ("tcp",))[0][inode]
    netlink(lambda kind, request, seq: [
        nlmsg(kind, seq, diag(socket.AF_INET, 10, "127.0.0.1", port, int(inode)))
        + done(seq)])
    assert procview._read_sock_diag_tcp()[0][inode] == from_proc
    assert procview._proc_hex_addr(socket.inet_pton(socket.AF_INET6, "::1")) \
        == ("00000000" * 3 + "01000000" if sys.byteorder == "little" else "0" * 31 + "1")


def test_a_refused_one_walk_request_falls_back_to_one_dump_per_family(netlink):
    def answer(kind: int, request: bytes, seq: int) -> list[bytes]:
        if kind == procview._TCPDIAG_GETSOCK:
            return [error(seq, -errno.EINVAL)]
        family, protocol, ext, states = struct.unpack("=BBBxI48x", request)
        assert (protocol, ext) == (socket.IPPROTO_TCP, 0) and not states & (1 << 1)
        addr = "127.0.0.1" if family == socket.AF_INET else "::1"
        return [nlmsg(kind, seq, diag(family, 10, addr, 80, 20 + family)), done(seq)]

    log = netlink(answer)
    owned, unowned = procview._read_sock_diag_tcp()
    assert sorted((t, shown(local)) for t, _, local in owned.values()) == [
        ("tcp", "127.0.0.1:80"), ("tcp6", "[::1]:80")]
    assert unowned == []
    assert [(kind, request[0]) for kind, _, _, request in log] == [
        (procview._TCPDIAG_GETSOCK, socket.AF_INET),
        (procview._SOCK_DIAG_BY_FAMILY, socket.AF_INET),
        (procview._SOCK_DIAG_BY_FAMILY, socket.AF_INET6)]
    assert [seq for _, _, seq, _ in log][1:] == [1, 2]   # a fresh socket, one sequence per dump


BROKEN = {
    "NLMSG_ERROR": lambda kind, seq: [error(seq, -errno.EPERM)],
    "DONE with an error": lambda kind, seq: [
        nlmsg(kind, seq, diag(socket.AF_INET, 10, "127.0.0.1", 80, 5)), done(seq, -errno.EINTR)],
    "datagram over the buffer": lambda kind, seq: [
        nlmsg(kind, seq, b"\0" * procview._DIAG_RECV_BYTES)],
    "message past its datagram": lambda kind, seq: [
        nlmsg(kind, seq, diag(socket.AF_INET, 10, "127.0.0.1", 80, 5), length=400)],
    "length under a header": lambda kind, seq: [nlmsg(kind, seq, b"", length=8)],
    "truncated header": lambda kind, seq: [nlmsg(kind, seq, diag(socket.AF_INET, 10, "127.0.0.1",
                                                                 80, 5)) + b"\0" * 8],
    "short inet_diag_msg": lambda kind, seq: [nlmsg(kind, seq, b"\0" * 40), done(seq)],
    "empty datagram": lambda kind, seq: [b""],
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_reply_is_an_oserror_and_the_sample_falls_back_to_proc(netlink, monkeypatch,
                                                                         broken):
    log = netlink(lambda kind, request, seq: BROKEN[broken](kind, seq))
    with pytest.raises(OSError):
        procview._read_sock_diag_tcp()
    assert [kind for kind, *_ in log] == [procview._TCPDIAG_GETSOCK] + \
        [procview._SOCK_DIAG_BY_FAMILY]     # the per-family fallback fails on its first dump too
    monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", -1)
    sample = ProcessSampler(os.getpid(), cpu_interval_s=0).sample()
    assert sample["tcp_source"] == "proc"


def test_accept_queue_entries_count_queued_children_once():
    listener = procview._proc_hex_addr(socket.inet_aton("127.0.0.1")) + ":2328"      # :9000
    other = procview._proc_hex_addr(bytes(4)) + ":2329"
    child = procview._proc_hex_addr(socket.inet_aton("127.0.0.7")) + ":2328"
    unowned = [("tcp", "08", child), ("tcp", "08", child), ("tcp6", "08", child),
               ("tcp", "06", listener)]
    entries = procview._accept_queue_entries([("tcp", listener, 3), ("tcp", other, 2)], unowned)
    # 3 queued on :9000, 2 of them listed as CLOSE_WAIT (the tcp6 one is another table's port).
    assert entries == [("tcp", "01", listener)] + [("tcp", "01", other)] * 2
    assert procview._accept_queue_entries([("tcp", listener, 1)], unowned[:2]) == []


# -- the size check and the choice of path ------------------------------------------------------


SOCKSTAT = """sockets: used 2000310
TCP: inuse 2000004 orphan 3 tw 120 alloc 2000010 mem 61
UDP: inuse 4 mem 2
"""
SOCKSTAT6 = """TCP6: inuse 7
UDP6: inuse 1
"""


@pytest.mark.parametrize("files, expected", [
    ({"sockstat": SOCKSTAT, "sockstat6": SOCKSTAT6}, 2000004 + 120 + 7),
    ({"sockstat": SOCKSTAT}, 2000004 + 120),             # no IPv6: sockstat6 is absent
    ({"sockstat": "TCP: inuse x tw\n", "sockstat6": "garbage\n\n"}, 0),
    ({}, 0),
])
def test_namespace_size_is_inuse_plus_tw_of_both_families(monkeypatch, files, expected):
    def read(path: str, missing_ok: bool = False) -> str:
        assert missing_ok and path.startswith("/proc/123/net/")
        return files.get(path.rsplit("/", 1)[1], "")

    monkeypatch.setattr(procview, "_read_text", read)
    assert procview._namespace_tcp_sockets(123) == expected


def test_the_real_sockstat_counts_the_sockets_held_here():
    with socket.socket() as lis:
        lis.bind(("127.0.0.1", 0))
        lis.listen(1)
        with socket.create_connection(lis.getsockname()), lis.accept()[0]:
            assert procview._namespace_tcp_sockets(os.getpid()) >= 3


def test_tcp_source_is_proc_up_to_the_threshold_and_sock_diag_above(monkeypatch):
    monkeypatch.setattr(procview, "_namespace_tcp_sockets", lambda pid: 50_000)
    sampler = ProcessSampler(os.getpid(), cpu_interval_s=0)
    for threshold, source in ((50_000, "proc"), (49_999, "sock_diag"), (10**9, "proc")):
        monkeypatch.setattr(procview, "SOCK_DIAG_THRESHOLD", threshold)
        assert sampler.sample()["tcp_source"] == source
    assert procview.SOCK_DIAG_THRESHOLD == 10**9 and "SOCK_DIAG_THRESHOLD" in procview.__all__


def test_the_sampler_shares_its_own_network_namespace():
    assert procview._same_netns(os.getpid())


# -- the kernel's dump against /proc ---------------------------------------------------------------


@pytest.mark.parametrize("one_walk", [True, False])
def test_the_real_dump_lists_our_sockets_as_proc_does_but_not_established(monkeypatch, one_walk):
    if not one_walk:
        real = procview._sock_diag_entries

        def per_family(requests):
            if requests[0][0] == procview._TCPDIAG_GETSOCK:
                raise OSError(errno.EINVAL, "refused")
            return real(requests)
        monkeypatch.setattr(procview, "_sock_diag_entries", per_family)
    held: list[socket.socket] = []
    families = [(socket.AF_INET, "127.0.0.1")]
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        families.append((socket.AF_INET6, "::1"))
    except OSError:
        pass                                  # no IPv6 loopback: the v4 half is the whole test
    for family, host in families:
        lis = socket.socket(family)
        lis.bind((host, 0))
        lis.listen(4)
        client = socket.create_connection(lis.getsockname()[:2])
        server, _ = lis.accept()
        client.shutdown(socket.SHUT_WR)       # client FIN_WAIT2, server CLOSE_WAIT, once acked
        established = socket.create_connection(lis.getsockname()[:2])
        held += [lis, client, server, established, lis.accept()[0]]
    try:
        inodes = {str(os.fstat(s.fileno()).st_ino) for s in held}

        def ours_in_proc() -> dict | None:
            """Our sockets in /proc's tables, once no FIN_WAIT1 waits for the peer's ACK."""
            owned = procview._read_inet_tables(os.getpid(), ("tcp", "tcp6"))[0]
            ours = {inode: entry for inode, entry in owned.items() if inode in inodes}
            return None if any(st == "04" for _, st, _ in ours.values()) else ours

        from_proc = wait_for(ours_in_proc, what="FIN_WAIT1 -> FIN_WAIT2")
        assert sorted(st for _, st, _ in from_proc.values()) == \
            sorted(["0A", "05", "08", "01", "01"] * len(families))
        dumped = {inode: entry for inode, entry in procview._read_sock_diag_tcp()[0].items()
                  if inode in inodes}
        assert dumped == {inode: entry for inode, entry in from_proc.items() if entry[1] != "01"}
    finally:
        for s in held:
            s.close()
