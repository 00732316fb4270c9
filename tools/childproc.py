"""The processes the tools start and watch: what is done to them, and what is read of them.

The tools (bench.py, soak.py, scale.py) start servers, load generators and client
processes that must never outlive them and that each hold thousands of sockets, and they
read those processes' RSS, fd count and CPU time from /proc. Both are written here once.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from typing import Callable, Iterable

__all__ = ["child_setup", "cpu_seconds", "cpu_ticks", "die_with_parent", "fd_count",
           "process_tree", "raise_nofile", "stat_cpu_ticks", "status_kb", "tcp_sockstat",
           "tree_rss_bytes"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux)."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig))


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def child_setup(cpus: Iterable[int] | None = None, alarm_s: float = 0) -> Callable[[], None]:
    """A ``preexec_fn``: die with this tool, run on ``cpus``, take the whole fd allowance;
    with ``alarm_s``, also die after that long (an alarm survives exec: for a peer that
    has no time limit of its own)."""
    cpu_set = set(cpus) if cpus is not None else None

    def setup() -> None:
        die_with_parent()
        if alarm_s:
            signal.alarm(int(alarm_s))
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)
        raise_nofile()

    return setup


# -- reading a process -------------------------------------------------------------------
# Each raises OSError if the process is gone (or not readable): the caller decides what a
# vanished process means for its figure.

def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status, such as ``VmRSS``; KeyError if the line is missing
    (a kernel thread or a zombie has no VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` holds (the entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def stat_cpu_ticks(stat_line: str) -> int:
    """utime + stime (clock ticks) from a /proc/PID/stat line; the name may hold spaces."""
    fields = stat_line[stat_line.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        return stat_cpu_ticks(f.read())


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a supervisor and its workers), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def tree_rss_bytes(pid: int) -> tuple[int, int] | None:
    """(VmRSS of ``pid`` and its descendants, how many processes), or None if ``pid`` is gone."""
    total = count = 0
    for p in process_tree(pid):
        try:
            kib = status_kb(p, "VmRSS")
        except KeyError:  # a zombie has no VmRSS
            kib = 0
        except OSError:
            if p == pid:
                return None
            continue
        total += kib * 1024
        count += 1
    return total, count


def tcp_sockstat() -> dict[str, int] | None:
    """This network namespace's TCP sockets in use and their memory (/proc/net/sockstat)."""
    try:
        with open("/proc/net/sockstat") as f:
            for row in f:
                if row.startswith("TCP:"):
                    words = row.split()[1:]
                    kv = dict(zip(words[::2], map(int, words[1::2])))
                    return {"tcp_inuse": kv["inuse"], "tcp_time_wait": kv["tw"],
                            "tcp_mem_bytes": kv["mem"] * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, KeyError, ValueError):
        pass
    return None
