"""Planning a run: how many client processes, which source addresses, how long it may take.

Pure functions of the numbers (N, the fd limit, the ephemeral port range, the rate): no
socket, no process, no clock. ``cli.py`` reads the machine's figures and passes them in, so
the tests can plan for a million connections without opening one.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

PORT_RANGE_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_PORT_RANGE = (32768, 60999)  # Linux's default, if /proc cannot be read
# Connections planned per source address: a quarter of the ~28,000 ephemeral ports towards one
# destination (32768-60999), and never more than 7,000. connect() finds a free port by probing
# from a random offset, so its cost grows with how full the range is: measured here, 100,000
# connections at 10,000/s took 31.9 s with 20,000 per address (the rate fell to ~1,000/s past
# 70 %, in kernel time) and 10.3 s with 7,000; at a million, 20,000 per address put the kernel
# at 78 % system time and the ramp stalled. Addresses are free (127/8 has 16 million).
PER_SOURCE_MAX = 7_000
PER_SOURCE_SHARE = 0.25
# Connections per client process: a socket is an fd, and RLIMIT_NOFILE's hard limit (20,000
# here) cannot be raised; 15,000 leaves room below it and keeps each process's epoll set and
# Python loop small enough to turn over quickly.
PER_PROC_MAX = 15_000
FD_MARGIN = 64  # fds a client process needs besides its sockets: epoll, pipes, Python's own
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def read_port_range(path: str = PORT_RANGE_PATH) -> tuple[int, int]:
    """The ephemeral port range (low, high), both included; Linux's default if unreadable."""
    try:
        with open(path) as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        return DEFAULT_PORT_RANGE
    return (lo, hi) if 0 < lo <= hi < 65536 else DEFAULT_PORT_RANGE


def per_source_default(port_range: tuple[int, int]) -> int:
    """Connections to plan per source address for this port range."""
    lo, hi = port_range
    return max(1, min(PER_SOURCE_MAX, int((hi - lo + 1) * PER_SOURCE_SHARE)))


def per_proc_limit(hard_nofile: int) -> int:
    """Connections one client process may hold under this hard RLIMIT_NOFILE."""
    return max(1, min(PER_PROC_MAX, hard_nofile - FD_MARGIN))


def default_procs(conns: int, hard_nofile: int) -> int:
    """Client processes needed to hold ``conns`` under the fd limit."""
    return max(1, math.ceil(conns / per_proc_limit(hard_nofile)))


def is_loopback(host_ip: str) -> bool:
    return ipaddress.ip_address(host_ip) in LOOPBACK


def source_addresses(count: int, skip: tuple[str, ...] = ()) -> list[str]:
    """The first ``count`` addresses of 127.0.0.0/8 from 127.0.0.2 up, leaving out 127.0.0.1
    (the usual server), host parts .0 and .255 (broadcast-like; some stacks refuse them as a
    source) and every address in ``skip`` (the server's own). ValueError past 127.255.255.254."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    skipped = {int(ipaddress.ip_address(a)) for a in skip}
    usable = 256 * 256 * 254 - 1  # host parts 1-254 of each /24, less 127.0.0.1
    if count > usable - len(skipped):
        raise ValueError(f"127.0.0.0/8 has fewer than {count} usable source addresses")
    out: list[str] = []
    n = int(LOOPBACK.network_address) + 2
    while len(out) < count:
        if n & 0xFF not in (0, 255) and n not in skipped:
            out.append(str(ipaddress.ip_address(n)))
        n += 1
    return out


@dataclass(frozen=True)
class Share:
    """One client process's part: connections ``first .. first + count - 1`` (global
    indexes) and, in that order, the source addresses they bind to as (address, how many);
    address "" means no bind (the kernel picks the source)."""

    index: int
    first: int
    count: int
    sources: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Plan:
    conns: int
    procs: int
    per_source: int                # connections planned per source address
    sources: tuple[str, ...]       # the addresses, in order; ("",) = the wildcard source
    shares: tuple[Share, ...]
    warnings: tuple[str, ...] = ()


def plan(conns: int, procs: int, per_source: int, loopback: bool,
         port_range: tuple[int, int] = DEFAULT_PORT_RANGE, skip: tuple[str, ...] = ()) -> Plan:
    """Spread ``conns`` over ``procs`` processes (shares differ by one at most) and, on
    loopback, over ``ceil(conns / per_source)`` source addresses, each holding at most
    ``per_source``. Connection g binds to address ``g // per_source``, so a process uses one or
    two addresses, rarely more. Off loopback only the wildcard source exists: a warning says
    so when N exceeds the ports one source address has towards one destination."""
    if conns < 1 or procs < 1 or procs > conns or per_source < 1:
        raise ValueError(f"need conns >= procs >= 1 and per_source >= 1, not conns={conns} "
                         f"procs={procs} per_source={per_source}")
    ports = port_range[1] - port_range[0] + 1
    warnings = []
    if loopback:
        sources = tuple(source_addresses(math.ceil(conns / per_source), skip))
        if per_source > ports:
            warnings.append(f"{per_source} connections per source address exceed the {ports} "
                            f"ephemeral ports {port_range[0]}-{port_range[1]}: expect "
                            f"addr_unavailable failures")
    else:
        sources, per_source = ("",), conns
        if conns > ports:
            warnings.append(f"{conns} connections to one address off 127.0.0.0/8 come from one "
                            f"source address, whose {ports} ephemeral ports "
                            f"({port_range[0]}-{port_range[1]}) are too few: expect "
                            f"addr_unavailable failures")
    base, extra = divmod(conns, procs)
    shares, first = [], 0
    for k in range(procs):
        count = base + (k < extra)
        segments, g, end = [], first, first + count
        while g < end:
            src = g // per_source
            upto = min(end, (src + 1) * per_source)
            segments.append((sources[src], upto - g))
            g = upto
        shares.append(Share(k, first, count, tuple(segments)))
        first = end
    return Plan(conns, procs, per_source, sources, tuple(shares), tuple(warnings))


def deadline_s(conns: int, procs: int, rate: float, hold_s: float, connect_timeout_s: float,
               echo_timeout_s: float) -> float:
    """How long a whole run may take before it gives up: start-up, the ramp at half the
    asked rate (the rate is a ceiling; a loaded server accepts slower), a connect and an echo
    timeout for the last connection, the hold, the second round (paced like the ramp) and
    some slack."""
    ramp_rate = rate if rate > 0 else 5000.0  # unpaced: assume a slow 5,000/s
    return (30.0 + 0.5 * procs + 2 * conns / ramp_rate + connect_timeout_s + 2 * echo_timeout_s
            + hold_s + conns / ramp_rate + 30.0)
