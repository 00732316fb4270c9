"""The soak's constants and what it does to the processes it starts."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Callable

from childproc import child_setup


ROOT = Path(__file__).resolve().parents[2]

HOST = "127.0.0.1"
INFLIGHT_BYTES = 16 << 20  # unechoed bytes all clients together may have queued or in flight
MAX_CONNECTING = 256       # connects in progress per client process (the backlog is 1024)
DRAIN_S = 30.0             # after the run: how long the final half-closes may take
SETTLE_S = 30.0            # waits on the daemon (N held, back to baseline)
FAULTS = ("rst", "half_close", "reconnect")
PING = b"PING\n"  # line-echo's heartbeat (--heartbeat): it comes between whole lines
FAULT_WEIGHTS = (0.3, 0.35, 0.35)

_LINGER_RST = struct.pack("ii", 1, 0)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    """preexec_fn: die with this script, run on ``cpus``, take the whole fd allowance."""
    return child_setup(cpus)
