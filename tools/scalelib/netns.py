"""Run a scale run in a network namespace of its own, with an established-connection hash sized
for it (``scale_run.py --netns``).

The kernel looks every TCP segment up in one hash table of established sockets, sized at boot
from memory (``net.ipv4.tcp_ehash_entries``: 262,144 buckets on this 24 GiB machine). A million
connections over loopback are 2,000,000 sockets, ~8 per bucket, and each segment walks its
chain: at the hold, ``__inet_lookup_established`` was a fifth of the machine's busy CPU
(docs/scale.md). Since Linux 6.1 a network namespace created while
``net.ipv4.tcp_child_ehash_entries`` is set gets a table of that many buckets of its own. So
the parent sets it, forks a child that unshares its network namespace (``CLONE_NEWNET``),
brings its loopback up and execs the run, and restores the setting when the run ends.
Root only; the namespace has only ``lo`` and goes away with its last process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
from typing import Sequence

CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
OWN_EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"
INSIDE_ENV = "SCALE_RUN_NETNS"  # set in the child: it is the namespace's run
CLONE_NEWNET = 0x40000000
MIN_ENTRIES = 1 << 16
MAX_ENTRIES = 1 << 24  # the kernel's cap for tcp_child_ehash_entries
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def ehash_entries(conns: int) -> int:
    """Buckets for ``conns`` loopback connections (both ends: 2 sockets each): the power of
    two at or above the sockets, so chains stay at one socket or less on average."""
    sockets = 2 * conns + 1024
    return max(MIN_ENTRIES, min(MAX_ENTRIES, 1 << (sockets - 1).bit_length()))


def own_ehash_entries() -> int | None:
    """The buckets of this process's namespace's table (None where the kernel does not say)."""
    try:
        with open(OWN_EHASH) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _enter_new_netns() -> None:  # pragma: no cover - runs in the forked child only
    """In the child between fork and exec: a new network namespace with ``lo`` up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def run_inside(argv: Sequence[str], conns: int, log=print) -> int:
    """Run ``argv`` (a command) in a new network namespace whose established hash has
    ``ehash_entries(conns)`` buckets; return its exit status (2 if it cannot be set up)."""
    want = ehash_entries(conns)
    try:
        with open(CHILD_EHASH) as f:
            before = f.read().strip()
        with open(CHILD_EHASH, "w") as f:
            f.write(str(want))
    except OSError as exc:
        print(f"scale_run.py: error: --netns needs root and Linux 6.1 or later "
              f"({CHILD_EHASH}: {exc.strerror or exc})", file=sys.stderr)
        return 2
    try:
        log(f"scale_run: a network namespace with {want:,} established-hash buckets")
        env = {**os.environ, INSIDE_ENV: str(want)}
        try:
            return subprocess.call(list(argv), env=env, preexec_fn=_enter_new_netns)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"scale_run.py: error: cannot enter a new network namespace: {exc}",
                  file=sys.stderr)
            return 2
    finally:
        with open(CHILD_EHASH, "w") as f:
            f.write(before)
