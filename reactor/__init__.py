"""reactor: a single-threaded, edge-triggered epoll reactor for many long-lived connections.

Bytes flow one way, each stage in its own module::

    socket -> recv_into -> receive ring -> codec -> handler.on_message
           -> conn.send -> send ring -> sendmsg

The public surface is exactly what this module exports.
"""

from .broadcast import BroadcastResult, broadcast
from .clock import FakeClock, MonotonicClock
from .connection import Connection, ConnectionOptions
from .errors import (CloseReason, CodecError, FrameTimeout, FrameTooLong, LineTimeout,
                     LineTooLong, ReactorError)
from .listener import Listener
from .loop import Handle, Loop
from .pool import BufferPool
from .protocols import BatchCodec, Codec, FlatCodec, Handler, Transport
from .ring import RingBuffer
from .selector import EdgeSelector, LevelSelector
from .service.stats_socket import read_stats, serve_stats
from .wakeup import drain_on_signals
from .wheel import Timer, TimerEntry, TimerWheel


__all__ = [
    "BatchCodec",
    "BroadcastResult",
    "BufferPool",
    "CloseReason",
    "Codec",
    "CodecError",
    "Connection",
    "ConnectionOptions",
    "EdgeSelector",
    "FakeClock",
    "FlatCodec",
    "FrameTimeout",
    "FrameTooLong",
    "Handle",
    "Handler",
    "LevelSelector",
    "LineTimeout",
    "LineTooLong",
    "Listener",
    "Loop",
    "MonotonicClock",
    "ReactorError",
    "RingBuffer",
    "Timer",
    "TimerEntry",
    "TimerWheel",
    "Transport",
    "broadcast",
    "drain_on_signals",
    "read_stats",
    "serve_stats",
]

__version__ = "0.1.0"
