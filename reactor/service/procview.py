"""What any process's file descriptors and sockets are doing, from psutil and /proc (Linux only).

``ProcessSampler(pid).sample()`` returns a JSON-ready dict: fds by kind, TCP states, the ownerless
TIME_WAIT/SYN_RECV entries on the process's addresses, its listeners, RLIMIT_NOFILE headroom, RSS and
CPU over the interval since the previous sample. It is the library behind ``fd-stats PID``; the reactor core never imports it. The process-level
figures come from psutil (name, cmdline, status, create time, CPU times, threads, RSS, RLIMIT_NOFILE);
the fds and sockets are read from /proc directly: /proc/PID/fd once per fd, each /proc/PID/net table
once per sample. psutil's ``net_connections("all")`` is not used: on 10,030 fds (5,000 TCP pairs)
it took 0.10 s, this module's whole fd and socket view 0.06 s; and it lists no inode-0 entries
(TIME_WAIT, SYN_RECV), no unbound or unconnected sockets, and reads the sampler's own netns tables.

How /proc answers, and the judgement calls made here:

* ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`` list every socket of the process's *network namespace*,
  keyed by inode; an fd ``socket:[INODE]`` is looked up there. A TCP socket that is neither listening
  nor connected (fresh, bound-only, or its connection already dead) is in no hash table, so it is in
  no /proc table either (``ss`` does not show it); the same holds for an unbound UDP socket. Such an
  fd is classified by the ``system.sockprotoname`` xattr of the fd link instead, and its TCP state is
  counted as CLOSE, which is what the kernel holds for it. (A socket created in another namespace is
  classified the same way; its real state is not visible from here.)
* Entries with inode 0 have no owner: TIME_WAIT, SYN_RECV request socks, orphans in FIN_WAIT/LAST_ACK
  after close(), and connections still in a listener's accept queue. They are matched to the process
  by local address only: the exact ``addr:port`` of a listener it holds or of a connection it holds
  that was accepted from a listener, or the port of a wildcard listener it holds (same table: an
  IPv4-mapped connection to a dual-stack listener is listed in tcp6). Client sockets' ephemeral
  ports are left out on purpose: the kernel reuses a port towards another peer while an unrelated
  TIME_WAIT still sits on it, so matching them counted other processes' leftovers.
* ``tcp_states`` counts sockets (distinct inodes), as ``ss`` does; ``fds`` counts descriptors, as
  RLIMIT_NOFILE does. They differ when a socket is dup()ed or shared.
* A big namespace is not read line by line: /proc/PID/net/tcp lists every socket of the namespace,
  and reading and splitting it took 0.8 s here for 200,000 sockets, whatever the process holds.
  When /proc/PID/net/sockstat and sockstat6 count more than ``SOCK_DIAG_THRESHOLD`` TCP sockets
  (inuse + tw, a few counters to read), the TCP states come instead from a netlink sock_diag dump
  of the namespace's sockets in every state *but* ESTABLISHED (listeners, TIME_WAIT, SYN_RECV,
  closing ones), which stays small however many connections are open; its cost is the kernel's
  walk of the connection hash table. A TCP fd of the process not in that dump is counted
  ESTABLISHED, its family read from the ``system.sockprotoname`` xattr; so a socket in no table
  (neither listening nor connected: CLOSE on the /proc path) counts as ESTABLISHED there.
  Connections still in a listener's accept queue (ownerless ESTABLISHED entries in /proc) are
  counted from the listener's queue length. The unowned matching knows the process's listeners
  but not the local addresses of its ESTABLISHED sockets; an accepted socket sits on its
  listener's address or a wildcard listener's port, so the same entries match. The dump is made
  in the sampler's own namespace, so a process in another network namespace is read from /proc
  (setns() would need CAP_SYS_ADMIN and a thread of its own), as it is when netlink is refused or
  answers garbage. ``tcp_source`` says which path was used; UDP always comes from /proc.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Iterator

import psutil  # type: ignore[import-untyped]  # no stubs: types-psutil is not a dependency

from ..address import format_address

__all__ = ["CPU_INTERVAL_S", "NoPermission", "ProcessGone", "ProcessSampler", "SOCK_DIAG_THRESHOLD",
           "TCP_STATES"]

#: TCP state names in kernel order: /proc/net/tcp's ``st`` 0x01 .. 0x0B (``ss`` spells them with dashes).
TCP_STATES = (
    "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
)
_STATE_BY_HEX = {f"{code:02X}": name for code, name in enumerate(TCP_STATES, 1)}
_ESTABLISHED_HEX = "01"
_CLOSE_WAIT_HEX = "08"
_LISTEN_HEX = "0A"
_CLOSE_HEX = "07"
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")
#: Above this many TCP sockets in the process's network namespace (sockstat's inuse + tw, IPv4 and
#: IPv6), TCP states are read with one netlink sock_diag dump instead of /proc/PID/net/tcp{,6}.
SOCK_DIAG_THRESHOLD = 50_000
# Netlink sock_diag (linux/netlink.h, sock_diag.h, inet_diag.h).
_NETLINK_SOCK_DIAG = 4
_TCPDIAG_GETSOCK = 18            # the original inet_diag request: both families in one table walk
_SOCK_DIAG_BY_FAMILY = 20        # its successor: one family per request, so one walk per family
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG = struct.Struct("=IHHII")            # nlmsghdr: len, type, flags, seq, pid
_NLMSG_ERRNO = struct.Struct("=i")          # nlmsgerr.error, and NLMSG_DONE's payload
_DIAG_REQ_V1 = struct.Struct("=BBBB48xII")  # inet_diag_req: family, src/dst len, ext, id, states,
                                            # dbs
_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")   # inet_diag_req_v2: family, protocol, ext, states, id
# inet_diag_msg: family, state, (timer, retrans), id.sport (big-endian), (dport), id.src,
# (dst, if, cookie, expires), rqueue, (wqueue, uid), inode; 72 bytes, then attributes.
_DIAG_MSG = struct.Struct("=BB2x2s2x16s16x12x4xI8xI")
# Every state but ESTABLISHED (bit 1), CLOSE to CLOSING: listeners, TIME_WAIT, SYN_RECV and closing
# sockets are few however many connections are open. TCP_BOUND_INACTIVE (bit 13, Linux 6.8+) is
# left out although it would list bound-only sockets: it walks the bind table too, which holds
# every connection again and doubled the dump's time.
_DIAG_STATES = ((1 << (len(TCP_STATES) + 1)) - 1) & ~0b11
_DIAG_STATE_HEX = {code: f"{code:02X}" for code in range(1, len(TCP_STATES) + 1)}
_DIAG_TABLES = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6"}
_DIAG_RECV_BYTES = 1 << 16      # a dump's datagrams are at most ~32 KiB (netlink's dump skb size)
_DIAG_TIMEOUT_S = 5.0           # a dump never waits on anything; this only bounds a broken kernel
_FD_KINDS = ("tcp", "tcp6", "udp", "udp6", "unix", "pipe", "file", "other")
# The sockfs xattr names the protocol: "TCP", "TCPv6", "UDP", "UDPv6", "UNIX", "UNIX-STREAM", ...
_KIND_BY_PROTO = {"TCP": "tcp", "TCPv6": "tcp6", "UDP": "udp", "UDPv6": "udp6"}
_SO_ACCEPTCON = 0x10000        # unix table Flags bit: the socket is listening
_UNIX_STREAM_TYPES = ("0001", "0005")   # SOCK_STREAM, SOCK_SEQPACKET: the types that can listen
_CMDLINE_MAX_CHARS = 200
_WARN_PCT = 80.0               # "warning" above this share of the soft limit: close to EMFILE
#: The shortest interval a sample's cpu_percent is measured over, by default (see ProcessSampler).
CPU_INTERVAL_S = 0.25
# psutil's create_time() is start ticks since boot plus the boot time; half a tick tells two apart.
_SAME_START_S = 0.5 / os.sysconf("SC_CLK_TCK")


class ProcessGone(Exception):
    """The PID does not exist, has exited (a zombie counts), or now names another process."""


class NoPermission(Exception):
    """The process's fds, net tables or limits cannot be read by this user."""


@dataclass(frozen=True, slots=True)
class _Usage:
    """The process-level figures of one sample, from psutil."""

    name: str
    cmdline: str
    cpu_s: float         # user + system CPU seconds since the process started
    threads: int
    rss_bytes: int
    nofile: tuple[int, int]


class ProcessSampler:
    """Samples one process, by PID, with psutil and /proc; the first sample is the baseline for growth.

    The constructor raises ``ProcessGone`` if there is no live process with this PID and
    ``NoPermission`` if its fds cannot be read; ``ValueError``/``TypeError`` for a PID that is not a
    positive int. A sampler never holds an fd between samples.

    ``cpu_interval_s`` is the shortest interval a sample's ``cpu_percent`` is measured over: the
    constructor takes the first CPU reading, and a ``sample()`` called sooner than that after the
    previous reading sleeps out the rest, so even a single sample reports the CPU used over an
    interval, never an average over the process's life (which hides a stall or a spin).
    """

    def __init__(self, pid: int, cpu_interval_s: float = CPU_INTERVAL_S) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, got {pid!r}")
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid}")
        if not cpu_interval_s >= 0:
            raise ValueError(f"cpu_interval_s must be >= 0, got {cpu_interval_s!r}")
        self._cpu_interval_s = float(cpu_interval_s)
        self._pid = pid
        self._name = "?"
        with self._psutil_errors():
            proc = psutil.Process(pid)
            with proc.oneshot():
                self._name = _printable(proc.name())
                status = proc.status()
                # The PID's identity: a later process reusing the PID has another create_time.
                self._create_time = proc.create_time()
                self._boot_time = psutil.boot_time()
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            raise ProcessGone(f"process {pid} ({self._name}) has exited and not been reaped (zombie)")
        self._check_readable()
        self._first_rss_bytes: int | None = None
        # (monotonic s, CPU s) of the last CPU reading: this one is the first sample's baseline.
        self._prev_cpu: tuple[float, float] = self._cpu_reading()

    @property
    def pid(self) -> int:
        """The sampled PID."""
        return self._pid

    def sample(self) -> dict:
        """Read the process's fds, sockets, limits and usage now; return the JSON-ready dict.

        Keys are a contract (see the module docstring and the fd-stats docs): ``pid``, ``name``,
        ``cmdline``, ``time``, ``fds``, ``tcp_states``, ``unowned``, ``listening``, ``tcp_source``,
        ``rlimit_nofile``, ``rss_bytes``, ``rss_growth_bytes``, ``cpu_percent``, ``cpu_interval_s``,
        ``threads``. ``tcp_source`` is how the TCP states were read: ``"proc"`` (/proc/PID/net/tcp
        and tcp6) or ``"sock_diag"`` (netlink, for a namespace of more than
        ``SOCK_DIAG_THRESHOLD`` TCP sockets).
        ``fds`` sums to its ``total``: the fds that existed both when /proc/PID/fd was listed and
        when each was read (an fd closed in between is skipped). ``cpu_percent`` is the CPU the
        process used over the last ``cpu_interval_s`` seconds, since the previous sample (the
        first: since the constructor); if fewer than the constructor's ``cpu_interval_s`` have
        passed since then once the fds are read, this call sleeps out the rest. Raises ``ProcessGone`` if the
        process exited before or during the sample, and ``NoPermission`` if it became unreadable
        (e.g. it changed uid).
        """
        now = time.time()
        self._alive()
        try:
            targets = _read_fd_targets(self._pid)
            inet, unowned_entries, tcp_source = _read_inet(self._pid)
            unix = _read_unix_table(self._pid)
        except PermissionError as exc:
            raise self._no_permission(exc.filename) from None
        except (FileNotFoundError, ProcessLookupError):
            self._alive()               # raises ProcessGone, which is the likely cause
            raise
        # The sock_diag dump leaves out ESTABLISHED: a held TCP socket it does not list is counted
        # as one. A socket in no table at all (fresh, bound-only, its connection dead: CLOSE, the
        # /proc path's count) is not listed either and cannot be told apart on that path.
        unlisted = _ESTABLISHED_HEX if tcp_source == "sock_diag" else _CLOSE_HEX
        view = _classify(self._pid, targets, inet, unix, unlisted)
        # The time spent reading counts towards the CPU interval; sleep out only what is left.
        wait_s = self._prev_cpu[0] + self._cpu_interval_s - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        # Read the process's figures last: if it exited while we read, the listing is not its.
        after = self._usage()
        mono = time.monotonic()
        total = view.counts["total"]
        return {
            "pid": self._pid,
            "name": after.name,
            "cmdline": after.cmdline,
            "time": now,
            "fds": {key: view.counts[key] for key in ("total", *_FD_KINDS)},
            "tcp_states": _named_states(Counter(view.tcp_sockets.values())),
            "unowned": _named_states(_match_unowned(view.tcp_sockets, inet, unowned_entries)),
            "listening": sorted(view.listening),
            "tcp_source": tcp_source,
            "rlimit_nofile": _nofile_report(*after.nofile, total),
            "rss_bytes": after.rss_bytes,
            "rss_growth_bytes": self._rss_growth(after.rss_bytes),
            **self._cpu_percent(mono, after.cpu_s),
            "threads": after.threads,
        }

    # -- the process, through psutil ------------------------------------------------------

    def _alive(self) -> None:
        """ProcessGone if the process exited, became a zombie or its PID was reused."""
        with self._psutil_errors():
            proc = psutil.Process(self._pid)
            with proc.oneshot():
                self._checked_name(proc)

    def _cpu_reading(self) -> tuple[float, float]:
        """(monotonic s, user + system CPU s of the process) now, after the checks of ``_alive``."""
        with self._psutil_errors():
            proc = psutil.Process(self._pid)
            with proc.oneshot():
                self._checked_name(proc)
                cpu = proc.cpu_times()
        return time.monotonic(), cpu.user + cpu.system

    def _usage(self) -> _Usage:
        """The process-level figures, after the same checks as ``_alive``. psutil reads
        /proc/PID/stat and status once each within ``oneshot()``.
        """
        with self._psutil_errors():
            proc = psutil.Process(self._pid)
            with proc.oneshot():
                name = self._checked_name(proc)
                cpu = proc.cpu_times()
                return _Usage(
                    name=name,
                    cmdline=_format_cmdline(proc.cmdline()),
                    cpu_s=cpu.user + cpu.system,
                    threads=proc.num_threads(),
                    rss_bytes=proc.memory_info().rss,
                    nofile=self._nofile_limit(proc),
                )

    def _checked_name(self, proc: psutil.Process) -> str:
        """The name of ``proc`` (a fresh ``psutil.Process``: one caches its create_time for life)."""
        name = _printable(proc.name())
        if not self._same_start(proc.create_time()):
            raise ProcessGone(f"process {self._pid} ({self._name}) has exited; "
                              f"the PID now belongs to {name!r}")
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            raise ProcessGone(f"process {self._pid} ({self._name}) has exited (zombie)")
        return name

    def _same_start(self, create_time: float) -> bool:
        """Whether ``create_time`` is the sampled process's, compared as seconds since boot.

        psutil's create_time() adds the boot time, which moves when the wall clock is stepped;
        a step between samples must not look like a reused PID.
        """
        started_s = create_time - psutil.boot_time()
        return abs(started_s - (self._create_time - self._boot_time)) < _SAME_START_S

    def _nofile_limit(self, proc: psutil.Process) -> tuple[int, int]:
        try:
            return proc.rlimit(psutil.RLIMIT_NOFILE)
        except psutil.AccessDenied:
            # prlimit() on another process needs its real, effective and saved uids and gids to
            # all be ours, or CAP_SYS_RESOURCE; reading its fds needs ptrace access instead, so a
            # sampler given CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH but not CAP_SYS_RESOURCE reads
            # the fds yet is denied here. /proc/PID/limits is world-readable: fall back to it.
            try:
                return _read_nofile_limit(self._pid)
            except PermissionError as exc:
                raise self._no_permission(exc.filename) from None
            except (FileNotFoundError, ProcessLookupError):
                raise ProcessGone(f"no process with PID {self._pid}") from None

    @contextmanager
    def _psutil_errors(self) -> Iterator[None]:
        """psutil's NoSuchProcess/ZombieProcess -> ProcessGone, AccessDenied -> NoPermission."""
        try:
            yield
        except psutil.ZombieProcess:
            raise ProcessGone(f"process {self._pid} ({self._name}) has exited (zombie)") from None
        except psutil.NoSuchProcess:
            raise ProcessGone(f"no process with PID {self._pid}") from None
        except psutil.AccessDenied as exc:
            # psutil raises it from the PermissionError of the /proc file it was reading.
            raise self._no_permission(getattr(exc.__cause__, "filename", None)) from None

    def _check_readable(self) -> None:
        """Raise NoPermission now rather than at the first sample: list the fds and read one."""
        path = f"/proc/{self._pid}/fd"
        try:
            names = os.listdir(path)
            if names:
                os.readlink(f"{path}/{names[0]}")
        except PermissionError as exc:
            raise self._no_permission(exc.filename or path) from None
        except FileNotFoundError:
            self._alive()               # the process exited meanwhile: ProcessGone
            # A closed fd is no evidence of anything; the sample will skip it.

    def _no_permission(self, what: str | None) -> NoPermission:
        try:
            uid = psutil.Process(self._pid).uids().effective
        except psutil.Error:
            uid = -1
        owner = f"uid {uid}" if uid >= 0 else "its owner"
        return NoPermission(f"permission denied reading {what or f'/proc/{self._pid}'} "
                            f"(PID {self._pid} {self._name!r} belongs to {owner}); "
                            f"run as that user or as root")

    # -- usage over time -----------------------------------------------------------------

    def _rss_growth(self, rss_bytes: int) -> int:
        if self._first_rss_bytes is None:
            self._first_rss_bytes = rss_bytes
        return rss_bytes - self._first_rss_bytes

    def _cpu_percent(self, mono: float, cpu_s: float) -> dict[str, float]:
        """``cpu_percent`` (100 = one core busy) and ``cpu_interval_s`` since the previous reading.

        psutil's ``cpu_percent(interval)`` semantics: CPU seconds used between two readings over
        the wall seconds between them. The kernel reports CPU time in clock ticks (1/100 s), so
        the figure moves in steps of 1 / interval %: 4 % over the default 0.25 s.
        """
        (prev_mono, prev_cpu_s), self._prev_cpu = self._prev_cpu, (mono, cpu_s)
        elapsed_s = mono - prev_mono
        used_s = max(0.0, cpu_s - prev_cpu_s)
        percent = round(100.0 * used_s / elapsed_s, 1) if elapsed_s > 0 else 0.0
        return {"cpu_percent": percent, "cpu_interval_s": round(elapsed_s, 3)}


# -- /proc readers: each raises OSError as is; the sampler turns it into its own errors ------


def _read_text(path: str, missing_ok: bool = False) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", errors="replace")
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise


def _read_fd_targets(pid: int) -> list[tuple[str, str]]:
    """(fd number, link target) for each fd, read through one directory fd; closed fds are skipped."""
    path = f"/proc/{pid}/fd"
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        targets = []
        for name in os.listdir(dir_fd):
            try:
                targets.append((name, os.readlink(name, dir_fd=dir_fd)))
            except FileNotFoundError:
                continue
            except PermissionError as exc:
                # Listing can be allowed while reading links is not; name the full path.
                raise PermissionError(exc.errno, exc.strerror, f"{path}/{name}") from None
        return targets
    finally:
        os.close(dir_fd)


_InetOwned = dict[str, tuple[str, str, str]]       # {inode: (table, state hex, local hex)}
_InetUnowned = list[tuple[str, str, str]]         # [(table, state hex, local hex)] of inode 0


def _read_inet(pid: int) -> tuple[_InetOwned, _InetUnowned, str]:
    """The inet sockets of the process's namespace, as ``_read_inet_tables``, and the TCP source.

    A big namespace's TCP part comes from sock_diag, if netlink answers in the same namespace;
    anything else (a small namespace, another namespace, netlink refused or garbled) reads /proc.
    """
    if _namespace_tcp_sockets(pid) > SOCK_DIAG_THRESHOLD and _same_netns(pid):
        try:
            owned, unowned = _read_sock_diag_tcp()
        except OSError:
            pass                        # EPERM (seccomp), EPROTONOSUPPORT (no inet_diag), ...
        else:
            udp, _ = _read_inet_tables(pid, ("udp", "udp6"))
            owned.update(udp)
            return owned, unowned, "sock_diag"
    owned, unowned = _read_inet_tables(pid)
    return owned, unowned, "proc"


def _namespace_tcp_sockets(pid: int) -> int:
    """TCP sockets in the namespace's tables: sockstat's inuse (hashed sockets) + tw, sockstat6's
    inuse (the TIME_WAIT count is one for both families). A few counters, however big the tables.
    """
    total = 0
    for table, label in (("sockstat", "TCP:"), ("sockstat6", "TCP6:")):
        for line in _read_text(f"/proc/{pid}/net/{table}", missing_ok=True).splitlines():
            fields = line.split()
            if fields[:1] == [label]:
                # "TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1": name value pairs.
                values = dict(zip(fields[1::2], fields[2::2]))
                total += sum(int(values[k]) for k in ("inuse", "tw") if values.get(k, "").isdigit())
    return total


def _same_netns(pid: int) -> bool:
    """Whether the process shares the sampler's network namespace (a netlink socket sees only its
    opener's). Unreadable counts as different: the /proc path then decides what is allowed.
    """
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _open_sock_diag() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket, in the sampler's network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)


def _read_sock_diag_tcp() -> tuple[_InetOwned, _InetUnowned]:
    """The namespace's TCP sockets in every state but ESTABLISHED, as ``_read_inet_tables`` gives
    them (addresses in /proc's hex), plus one ownerless ESTABLISHED entry per connection queued
    on a listener: what /proc lists for them. Raises OSError for anything netlink does wrong.

    The dump's cost is the kernel's walk of the whole connection hash table (about 0.2 s per
    million sockets here), not the few sockets it returns; TCPDIAG_GETSOCK walks it once for both
    families, SOCK_DIAG_BY_FAMILY once per family, so the latter is only the fallback.
    """
    try:
        entries = _sock_diag_entries([(_TCPDIAG_GETSOCK, _DIAG_REQ_V1.pack(
            socket.AF_INET, 0, 0, 0, _DIAG_STATES, 0))])
    except OSError:
        entries = _sock_diag_entries([(_SOCK_DIAG_BY_FAMILY, _DIAG_REQ_V2.pack(
            family, socket.IPPROTO_TCP, 0, _DIAG_STATES)) for family in _DIAG_TABLES])
    owned: _InetOwned = {}
    unowned: _InetUnowned = []
    queued: list[tuple[str, str, int]] = []        # (table, listener local, accept queue length)
    for table, state, local, inode, rqueue in entries:
        if inode:
            owned[str(inode)] = (table, state, local)
            if state == _LISTEN_HEX and rqueue:
                queued.append((table, local, rqueue))
        else:
            unowned.append((table, state, local))
    unowned.extend(_accept_queue_entries(queued, unowned))
    return owned, unowned


def _sock_diag_entries(requests: list[tuple[int, bytes]]) -> list[tuple[str, str, str, int, int]]:
    """(table, state hex, local hex, inode, rqueue) of every socket the dump requests list, all
    read before any is used, so a dump failing part way leaves nothing half done.
    """
    entries: list[tuple[str, str, str, int, int]] = []
    with _open_sock_diag() as sock:
        sock.settimeout(_DIAG_TIMEOUT_S)
        for seq, (kind, request) in enumerate(requests, 1):
            entries.extend(_sock_diag_dump(sock, kind, request, seq))
    return entries


def _accept_queue_entries(queued: list[tuple[str, str, int]],
                          unowned: _InetUnowned) -> _InetUnowned:
    """Ownerless ESTABLISHED entries for the connections queued on listeners, at the listener's
    address (for a wildcard listener /proc shows the address connected to; the matching treats
    both alike). A listener's rqueue counts every queued child: those whose peer already closed
    are listed themselves as ownerless CLOSE_WAIT on the port, so they are taken off (one reset
    before accept() is in no table: counted ESTABLISHED here, invisible in /proc).
    """
    close_wait = Counter((table, local.partition(":")[2]) for table, state, local in unowned
                         if state == _CLOSE_WAIT_HEX)
    entries: _InetUnowned = []
    for table, local, n in queued:
        port = (table, local.partition(":")[2])
        taken = min(n, close_wait[port])
        close_wait[port] -= taken
        entries.extend([(table, _ESTABLISHED_HEX, local)] * (n - taken))
    return entries


def _sock_diag_dump(sock: socket.socket, kind: int, request: bytes,
                    seq: int) -> Iterator[tuple[str, str, str, int, int]]:
    """Send one dump request; yield (table, state hex, local hex, inode, rqueue) per TCP socket.

    Reads datagrams into one bounded buffer until NLMSG_DONE; a datagram that does not fit, a
    message running past its datagram, NLMSG_ERROR or a failed DONE raise OSError. Messages of
    another sequence number (a stale dump) are skipped.
    """
    sock.send(_NLMSG.pack(_NLMSG.size + len(request), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
              + request)
    buf = bytearray(_DIAG_RECV_BYTES)
    header, body, msg = _NLMSG.size, _NLMSG.size + _DIAG_MSG.size, _DIAG_MSG.unpack_from
    # Hex spellings, cached: a namespace's sockets share a few addresses, and ports repeat.
    addrs: dict[bytes, str] = {}
    ports: dict[bytes, str] = {}
    while True:
        # MSG_TRUNC: netlink returns the datagram's full length, so one too big is seen, not cut.
        size = sock.recv_into(buf, 0, socket.MSG_TRUNC)
        if size > len(buf):
            raise OSError(errno.EMSGSIZE, f"sock_diag datagram of {size} bytes")
        if size == 0:
            raise OSError(errno.EPROTO, "empty sock_diag datagram")
        offset = 0
        while offset < size:
            if size - offset < header:
                raise OSError(errno.EPROTO, "truncated netlink header")
            length, msg_kind, _, msg_seq, _ = _NLMSG.unpack_from(buf, offset)
            if length < header or offset + length > size:
                raise OSError(errno.EPROTO, f"netlink message of {length} bytes in {size - offset}")
            if msg_seq == seq:
                if msg_kind == _NLMSG_DONE or msg_kind == _NLMSG_ERROR:
                    # Both carry an int: 0 or -errno (a dump that failed part way ends in DONE).
                    code = _NLMSG_ERRNO.unpack_from(buf, offset + header)[0] \
                        if length >= header + _NLMSG_ERRNO.size else 0
                    if code < 0:
                        raise OSError(-code, f"sock_diag: {os.strerror(-code)}")
                    return
                if msg_kind == kind:
                    if length < body:
                        raise OSError(errno.EPROTO, f"inet_diag_msg of {length} bytes")
                    family, state, sport, src, rqueue, inode = msg(buf, offset + header)
                    table = _DIAG_TABLES.get(family)
                    if table is not None:
                        if family == socket.AF_INET:
                            src = src[:4]
                        addr = addrs.get(src) or addrs.setdefault(src, _proc_hex_addr(src))
                        port = ports.get(sport) or ports.setdefault(sport, sport.hex().upper())
                        local = f"{addr}:{port}"
                        state_hex = _DIAG_STATE_HEX.get(state) or f"{state:02X}"
                        yield table, state_hex, local, inode, rqueue
            offset += (length + 3) & ~3             # NLMSG_ALIGN


def _proc_hex_addr(addr: bytes) -> str:
    """A network-order address as /proc/net/tcp spells it ("0100007F" for 127.0.0.1): each 32-bit
    word printed as a host-order integer. The port is a plain big-endian number ("2328").
    """
    if sys.byteorder == "little":
        addr = b"".join(addr[i:i + 4][::-1] for i in range(0, len(addr), 4))
    return addr.hex().upper()


def _read_inet_tables(pid: int,
                      tables: tuple[str, ...] = _INET_TABLES) -> tuple[_InetOwned, _InetUnowned]:
    """Owned sockets {inode: (table, state hex, local hex)} and the ownerless TCP entries.

    Addresses stay in the kernel's hex ("0100007F:2328") for matching; only listeners get decoded.
    """
    owned: _InetOwned = {}
    unowned: _InetUnowned = []
    for table in tables:
        # tcp6/udp6 are absent when IPv6 is disabled.
        lines = _read_text(f"/proc/{pid}/net/{table}", missing_ok=True).splitlines()
        for line in lines[1:]:
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = line.split(None, 10)
            if len(fields) < 10:
                continue
            inode = fields[9]
            if inode != "0":
                owned[inode] = (table, fields[3], fields[1])
            elif table.startswith("tcp"):
                unowned.append((table, fields[3], fields[1]))
    return owned, unowned


def _read_unix_table(pid: int) -> dict[str, str | None]:
    """{inode: listening path or None} for every unix socket of the namespace.

    Columns: Num RefCount Protocol Flags Type St Inode [Path]; a listener has __SO_ACCEPTCON in
    Flags and St 01 (SS_UNCONNECTED). Abstract names are printed with a leading "@".
    """
    sockets: dict[str, str | None] = {}
    for line in _read_text(f"/proc/{pid}/net/unix", missing_ok=True).splitlines()[1:]:
        fields = line.split(None, 7)
        if len(fields) < 7:
            continue
        listening = (int(fields[3], 16) & _SO_ACCEPTCON and fields[5] == "01"
                     and fields[4] in _UNIX_STREAM_TYPES)
        path = fields[7] if len(fields) > 7 else ""
        sockets[fields[6]] = (path or "(unnamed)") if listening else None
    return sockets


def _read_nofile_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE from /proc/PID/limits: the fallback when prlimit() is denied."""
    for line in _read_text(f"/proc/{pid}/limits").splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return _limit_value(soft), _limit_value(hard)
    raise ValueError(f"no 'Max open files' line in /proc/{pid}/limits")


def _limit_value(text: str) -> int:
    # Linux caps RLIMIT_NOFILE at fs.nr_open, so "unlimited" should not occur; parse it anyway.
    return resource.RLIM_INFINITY if text == "unlimited" else int(text)


def _format_cmdline(args: list[str]) -> str:
    text = _printable(" ".join(args))
    if len(text) > _CMDLINE_MAX_CHARS:
        text = text[:_CMDLINE_MAX_CHARS - 3] + "..."
    return text


def _printable(text: str) -> str:
    """psutil decodes with surrogateescape; undecodable bytes become U+FFFD, so JSON is valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# -- classification ----------------------------------------------------------------------


@dataclass(slots=True)
class _FdView:
    counts: Counter            # "total" and each of _FD_KINDS
    tcp_sockets: dict          # {inode: state hex} of TCP sockets held, each counted once
    listening: list            # formatted listener addresses


def _classify(pid: int, targets: list[tuple[str, str]], inet: dict, unix: dict,
              unlisted_tcp: str = _CLOSE_HEX) -> _FdView:
    """Sort each fd into a kind; collect held TCP sockets and listeners. Vanished fds are skipped.

    A TCP socket in no table gets the state ``unlisted_tcp``: CLOSE when the tables are /proc's,
    ESTABLISHED when they are a sock_diag dump without that state (see the module docstring).
    """
    counts: Counter = Counter({key: 0 for key in ("total", *_FD_KINDS)})
    tcp_sockets: dict[str, str] = {}
    listening: list[str] = []
    fd_dir = f"/proc/{pid}/fd/"
    for name, target in targets:
        if target.startswith("socket:["):
            inode = target[8:-1]
            kind = _socket_kind(inode, inet, unix, fd_dir + name)
            if kind in ("tcp", "tcp6") and inode not in tcp_sockets:
                entry = inet.get(inode)
                tcp_sockets[inode] = entry[1] if entry else unlisted_tcp
                if entry and entry[1] == _LISTEN_HEX:
                    listening.append(_format_inet(entry[2]))
            elif kind == "unix" and unix.get(inode):
                listening.append("unix:" + unix[inode])
        elif target.startswith("pipe:["):
            kind = "pipe"
        elif target.startswith("/"):
            kind = _path_kind(fd_dir + name)
        else:
            kind = "other"          # anon_inode:[eventpoll], anon_inode:[eventfd], ...
        if kind is None:
            continue                # closed between the listing and now
        counts[kind] += 1
        counts["total"] += 1
    # A listener reached through several fds (dup, fork) is listed once.
    return _FdView(counts, tcp_sockets, sorted(set(listening)))


def _socket_kind(inode: str, inet: dict, unix: dict, fd_path: str) -> str | None:
    entry = inet.get(inode)
    if entry is not None:
        return entry[0]
    if inode in unix:
        return "unix"
    # In no table: a TCP/UDP socket not yet (or no longer) hashed, or another family. Ask sockfs.
    try:
        proto = os.getxattr(fd_path, "system.sockprotoname").rstrip(b"\0").decode()
    except FileNotFoundError:
        return None
    except OSError:
        return "other"
    if proto.startswith("UNIX"):
        return "unix"
    return _KIND_BY_PROTO.get(proto, "other")


def _path_kind(fd_path: str) -> str | None:
    """"file" for a regular file (deleted or memfd included), "pipe" for a FIFO, else "other"."""
    try:
        mode = os.stat(fd_path).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return "other"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "pipe"
    return "other"


def _format_inet(local_hex: str) -> str:
    """ "0100007F:2328" -> "127.0.0.1:9000"; IPv6 in brackets.

    The kernel prints each 32-bit word of the address as a host-order integer.
    """
    addr_hex, port_hex = local_hex.split(":")
    raw = bytes.fromhex(addr_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ip_address(raw)
    port = int(port_hex, 16)
    return format_address((str(ip), port))


def _match_unowned(tcp_sockets: dict, inet: dict, unowned_entries: list) -> Counter:
    """Count ownerless TCP entries on the process's server-side addresses, by state hex.

    Matched: the exact local addr:port of a held socket that is a listener or was accepted from one
    (any owner's LISTEN entry on that addr:port or wildcard port), and any address on the port of a
    held wildcard listener. A held *client* socket's ephemeral port is not used: the kernel reuses
    it towards other peers while older TIME_WAITs sit on it, which are not this process's.
    From a sock_diag dump ``inet`` has no ESTABLISHED entries, so the held sockets' addresses
    are those of its listeners and other non-ESTABLISHED sockets; an accepted socket sits on its
    listener's address or a held wildcard listener's port, which matches the same entries.
    """
    listen_locals: set[tuple[str, str]] = set()
    listen_wild_ports: set[tuple[str, str]] = set()
    for table, state, local in inet.values():
        if state == _LISTEN_HEX:
            listen_locals.add((table, local))
            addr_hex, _, port_hex = local.partition(":")
            if not addr_hex.strip("0"):
                listen_wild_ports.add((table, port_hex))
    held_locals: set[tuple[str, str]] = set()
    own_wild_ports: set[tuple[str, str]] = set()
    for inode, state in tcp_sockets.items():
        entry = inet.get(inode)
        if entry is None:
            continue
        table, _, local = entry
        addr_hex, _, port_hex = local.partition(":")
        if (table, local) in listen_locals or (table, port_hex) in listen_wild_ports:
            held_locals.add((table, local))
        if state == _LISTEN_HEX and not addr_hex.strip("0"):
            own_wild_ports.add((table, port_hex))
    found: Counter = Counter()
    for table, state, local in unowned_entries:
        if (table, local) in held_locals or (table, local.partition(":")[2]) in own_wild_ports:
            found[state] += 1
    return found


def _named_states(by_hex: Counter) -> dict[str, int]:
    """{state hex: n} -> {state name: n} in kernel order, nonzero only."""
    return {name: by_hex[code] for code, name in _STATE_BY_HEX.items() if by_hex.get(code)}


def _nofile_report(soft: int, hard: int, used: int) -> dict:
    if soft == resource.RLIM_INFINITY:
        headroom, used_pct = -1, 0.0
    else:
        headroom = soft - used
        used_pct = round(100.0 * used / soft, 1) if soft > 0 else 100.0
    return {"soft": soft, "hard": hard, "used": used, "headroom": headroom,
            "used_pct": used_pct, "warning": used_pct > _WARN_PCT}
