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
"""

from __future__ import annotations

import os
import resource
import stat
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Iterator

import psutil

__all__ = ["CPU_INTERVAL_S", "NoPermission", "ProcessGone", "ProcessSampler", "TCP_STATES"]

#: TCP state names in kernel order: /proc/net/tcp's ``st`` 0x01 .. 0x0B (``ss`` spells them with dashes).
TCP_STATES = (
    "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
)
_STATE_BY_HEX = {f"{code:02X}": name for code, name in enumerate(TCP_STATES, 1)}
_LISTEN_HEX = "0A"
_CLOSE_HEX = "07"
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")
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
        ``cmdline``, ``time``, ``fds``, ``tcp_states``, ``unowned``, ``listening``, ``rlimit_nofile``,
        ``rss_bytes``, ``rss_growth_bytes``, ``cpu_percent``, ``cpu_interval_s``, ``threads``.
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
            inet, unowned_entries = _read_inet_tables(self._pid)
            unix = _read_unix_table(self._pid)
        except PermissionError as exc:
            raise self._no_permission(exc.filename) from None
        except (FileNotFoundError, ProcessLookupError):
            self._alive()               # raises ProcessGone, which is the likely cause
            raise
        view = _classify(self._pid, targets, inet, unix)
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


def _read_inet_tables(pid: int) -> tuple[dict[str, tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Owned sockets {inode: (table, state hex, local hex)} and the ownerless TCP entries.

    Addresses stay in the kernel's hex ("0100007F:2328") for matching; only listeners get decoded.
    """
    owned: dict[str, tuple[str, str, str]] = {}
    unowned: list[tuple[str, str, str]] = []
    for table in _INET_TABLES:
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


def _classify(pid: int, targets: list[tuple[str, str]], inet: dict, unix: dict) -> _FdView:
    """Sort each fd into a kind; collect held TCP sockets and listeners. Vanished fds are skipped."""
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
                tcp_sockets[inode] = entry[1] if entry else _CLOSE_HEX
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
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _match_unowned(tcp_sockets: dict, inet: dict, unowned_entries: list) -> Counter:
    """Count ownerless TCP entries on the process's server-side addresses, by state hex.

    Matched: the exact local addr:port of a held socket that is a listener or was accepted from one
    (any owner's LISTEN entry on that addr:port or wildcard port), and any address on the port of a
    held wildcard listener. A held *client* socket's ephemeral port is not used: the kernel reuses
    it towards other peers while older TIME_WAITs sit on it, which are not this process's.
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
