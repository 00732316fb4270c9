#!/usr/bin/env python3
"""The asyncio peers of tools/bench.py: the same line-echo contract as a plain ``Protocol``.

    python tools/bench/aio_echo.py --port 0 [--style batch|lines] [--loop asyncio|uvloop]
                                   [--tls-cert PEM --tls-key PEM]

Every ``\\n``-terminated line goes back byte for byte, a partial line is kept until its
newline arrives (and goes back at EOF), and reading pauses while the transport's write
buffer is above its high water mark (``pause_writing``/``resume_writing``). Two styles:
``batch`` (the default) is the fastest honest way to write this on asyncio, one
``transport.write`` of everything up to the last newline per ``data_received``, no
per-line work in Python; ``lines`` handles each line as a line, the way asyncio's docs
and most users write it (``PerLineEcho``: a ``bytes`` per line, one ``writelines``).
``--loop uvloop`` runs the same code on uvloop. With ``--tls-cert``/``--tls-key`` the same
protocol runs inside TLS: ``create_server(ssl=ctx)``, the context built as line-echo builds
its own (TLS 1.2 and later, renegotiation refused, the same certificate), so the two pay
for the same handshake; asyncio's (or uvloop's) SSL transport does the record layer.
Prints ``listening on 127.0.0.1:PORT`` first and stops by itself after ``--max-seconds``
(default 600; or on SIGTERM/SIGINT). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import ssl
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


class PerLineEcho(LineEcho):
    """Split the buffer into lines and hand them back with one ``transport.writelines``.

    What a careful user writes after asyncio's docs: their TCP echo server example
    (``EchoServerProtocol``) makes one transport call per ``data_received``, and here that
    call carries the lines, each its own ``bytes`` with its newline put back. Careful, as
    the buffer is split once per ``data_received`` (``*lines, partial =
    buffer.split(b"\\n")``), not rescanned per line. ``writelines``, not a ``write`` per
    line: while the transport's buffer is empty every ``write`` is a ``send``, and with a
    ``send`` per line this peer echoed 0.35 M lines/s at 100 firehose connections (the
    batch style: 240 M) and left 744 of 1,000 connections without a single line in 4 s,
    failing the contract; with ``writelines`` it did 16 M and served all 100. (On Python
    3.11 ``writelines`` joins the lines and calls ``write`` once.) The partial line, EOF
    and the pause/resume of reading are ``LineEcho``'s.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        self.transport.writelines([line + b"\n" for line in lines])  # type: ignore[union-attr]


STYLES = {"batch": LineEcho, "lines": PerLineEcho}


def tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """The server context line-echo builds (reactor/tls.py ``server_context``), rebuilt here
    so that this peer does not import the code under test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(style: str, port: int, max_seconds: float, backlog: int,
                ctx: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(STYLES[style], "127.0.0.1", port, backlog=backlog,
                                      ssl=ctx)
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
    p.add_argument("--style", choices=tuple(STYLES), default="batch",
                   help="batch: one write up to the last newline; lines: a bytes per line, "
                        "one writelines")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="its key (default: in --tls-cert)")
    a = p.parse_args(argv)
    if a.tls_key and not a.tls_cert:
        p.error("--tls-key needs --tls-cert")
    ctx = tls_context(a.tls_cert, a.tls_key) if a.tls_cert else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.loop == "uvloop":
        import uvloop  # not installed: the benchmark skips this peer before starting it

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(a.style, a.port, a.max_seconds, a.backlog, ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
