#!/usr/bin/env python3
"""The asyncio peer of tools/bench.py: the same line-echo contract as a plain ``Protocol``.

    python tools/bench/aio_echo.py --port 0 [--loop asyncio|uvloop] [--max-seconds 600]

Every ``\\n``-terminated line goes back byte for byte, a partial line is kept until its
newline arrives, and reading pauses while the transport's write buffer is above its high
water mark (``pause_writing``/``resume_writing``). It is the fastest honest way to write
this on asyncio: one ``transport.write`` of everything up to the last newline per
``data_received``, no per-line work in Python. ``--loop uvloop`` runs the same code on
uvloop. Prints ``listening on 127.0.0.1:PORT`` first and stops by itself after
``--max-seconds`` (or on SIGTERM/SIGINT). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys


class LineEcho(asyncio.Protocol):
    """Echo up to the last newline in one write; keep the partial line."""

    __slots__ = ("transport", "partial")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n") + 1
        if not end:
            self.partial = data
        elif end == len(data):
            self.partial = b""
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            self.partial = data[end:]
            self.transport.write(data[:end])  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if self.partial:  # the trailing partial line goes back too, as line-echo does
            self.transport.write(self.partial)  # type: ignore[union-attr]
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]


async def serve(port: int, max_seconds: float, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LineEcho, "127.0.0.1", port, backlog=backlog)
    where = server.sockets[0].getsockname()
    print(f"listening on {where[0]}:{where[1]}", flush=True)
    done = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: done.done() or done.set_result(None))
    loop.call_later(max_seconds, lambda: done.done() or done.set_result(None))
    await done
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--backlog", type=int, default=4096)
    a = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.loop == "uvloop":
        import uvloop  # not installed: the benchmark skips this peer before starting it

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(a.port, a.max_seconds, a.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
