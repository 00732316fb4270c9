"""A write deadline across a lossy link, in a network namespace of its own (run as root).

Run by tests/integration/test_faults.py as ``python lossy_link.py``: the process unshares its
network namespace, brings its loopback up and streams to two peers with a 1 s write deadline
(one reads everything, one reads nothing), takes the loopback down for ``DOWN_S`` seconds
while the reader is being streamed to, brings it back, and prints one JSON object: how much
the reader got and whether it was intact, and why each connection closed.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from reactor import Handler, Loop  # noqa: E402
from handlers.line import LineCodec  # noqa: E402

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
DOWN_S = 4.0  # longer than the write deadline and its grace together (1 s + 1 s)
BLOCK = bytes(range(256)) * 4096  # 1 MiB; the stream is this block again and again


def set_loopback(up: bool) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        flags = flags | IFF_UP if up else flags & ~IFF_UP
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags))
    finally:
        s.close()


class Pusher(Handler):
    """Streams BLOCKs to every peer, a few more each time its backlog drains, until stopped."""

    def __init__(self) -> None:
        self.conns: list = []
        self.sent: dict = {}
        self.streaming = True

    def on_connect(self, conn) -> None:
        self.conns.append((conn.peer[1], conn))  # asked now: the kernel forgets at the close
        self.sent[conn] = 0
        self.on_writable(conn)

    def on_writable(self, conn) -> None:
        while self.streaming and conn.writable:
            conn.write(BLOCK)
            self.sent[conn] += len(BLOCK)


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        print(json.dumps({"error": f"unshare: {os.strerror(ctypes.get_errno())}"}))
        return 1
    set_loopback(True)
    loop = Loop()
    handler = Pusher()
    listener = loop.listen(("127.0.0.1", 0), lambda: handler, LineCodec, write_timeout_s=1.0,
                           max_send_buffer=16 << 20)
    addr = listener.address
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stalled.connect(addr)
    reader = socket.create_connection(addr)
    reader.setblocking(False)
    got = bytearray()

    def step(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            loop.run_once(0.005)
            try:
                while True:
                    chunk = reader.recv(1 << 16)
                    if not chunk:
                        return
                    got.extend(chunk)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return

    step(0.3)
    served = len(got)
    set_loopback(False)
    step(DOWN_S)
    during = len(got)
    set_loopback(True)
    step(0.5)
    handler.streaming = False  # what is queued now is the whole stream
    by_port = dict(handler.conns)
    mine = by_port[reader.getsockname()[1]]
    other = by_port[stalled.getsockname()[1]]
    expected = handler.sent[mine]
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        step(0.1)
    whole, part = divmod(len(got), len(BLOCK))
    print(json.dumps({
        "served_before": served, "got_during_outage": during - served, "got": len(got),
        "intact": bytes(got) == BLOCK * whole + BLOCK[:part], "expected": expected,
        "reader_reason": mine.close_reason.value if mine.close_reason else None,
        "stalled_reason": other.close_reason.value if other.close_reason else None,
    }))
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
