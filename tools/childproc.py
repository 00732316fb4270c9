"""What every tool here does to the processes it starts (and to itself): one place.

The tools (bench.py, soak.py, scale.py) start servers, load generators and client
processes that must never outlive them and that each hold thousands of sockets.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from typing import Callable, Iterable

__all__ = ["child_setup", "die_with_parent", "raise_nofile"]

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
