"""broadcast(): one message to many peers, skipping the ones that are not keeping up.

A slow client must not hold up the broadcast (nor grow memory for everyone):
a peer whose send buffer is above its high watermark is skipped and counted,
not queued for. The payload is encoded once and copied into each send ring.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from .connection import Connection
from .protocols import Codec

__all__ = ["broadcast", "BroadcastResult"]


class BroadcastResult(NamedTuple):
    sent: int  #: peers the message was queued for
    skipped: int  #: peers skipped because they were above their high watermark
    closed: int  #: peers that were closing or closed


def broadcast(conns: Iterable[Connection], msg: Any, codec: Codec | None = None) -> BroadcastResult:
    """Queue ``msg`` for every writable connection in ``conns``.

    With ``codec``, ``msg`` is encoded once with it; without, ``msg`` must be
    bytes-like and is sent raw. Skipped peers are also counted in each loop's
    stats (``broadcast_skipped``).
    """
    data = codec.encode(msg) if codec is not None else msg
    sent = skipped = closed = 0
    for conn in conns:
        if conn._state > 1:  # closing or closed
            closed += 1
        elif not conn.writable:
            skipped += 1
            conn._hub.broadcast_skipped += 1
        elif conn.write(data):
            sent += 1
        else:
            closed += 1
    return BroadcastResult(sent, skipped, closed)
