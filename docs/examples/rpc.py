"""Pipelined RPC: CPU work in a thread pool, replies sent from the loop, in request order.

    python docs/examples/rpc.py --port 9300                           # the server
    python docs/examples/rpc.py client --port 9300 --requests 64      # pipeline 64, check all

Frames: a 4-byte big-endian length, then the payload (``LengthPrefixedCodec``). A request is
``rounds`` (4 bytes, big-endian) then ``data``; the job is SHA-256 of ``data * rounds``. A
reply is ``0x00`` + the 32-byte digest, or ``0x01`` + an error message. A frame over
``--max-frame`` gets one error reply and the close (replies still being computed are dropped).

What it shows, and the library features it uses (docs/examples/rpc.md explains the choices):

- Leaving the loop thread: ``on_message`` submits the job to a ``ThreadPoolExecutor``; the
  pool thread hands the result back with ``Loop.call_soon_threadsafe`` (which wakes the
  loop), and the reply is sent from the loop, the only thread that may touch a connection.
- In-order replies to pipelined requests: each request takes a slot in its connection's
  queue; a reply leaves only when every earlier one has, whatever order the pool finishes in.
- ``pause_reading`` / ``resume_reading``: at most ``--max-inflight`` requests of a connection
  in the pool; ``on_eof`` returning True: a half-closed client still gets its last replies.
- The client: ``Loop.connect`` with a timeout; a failed connect ends in ``on_close``, and
  ``conn.error`` says why. It sends more from ``on_writable`` as the server takes them.
- SIGTERM/SIGINT: let the pool finish, refuse what arrives meanwhile, ``Loop.shutdown``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import logging
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from handlers.length_prefixed import LengthPrefixedCodec
from reactor import CloseReason, CodecError, Connection, Handler, Loop

log = logging.getLogger("rpc")

OK, ERR = b"\x00", b"\x01"
MAX_WORK = 1 << 28  # bytes hashed for one request at most, a round counting 64 at least


def work(rounds: int, data: bytes) -> bytes:
    """The CPU job, run in a pool thread (hashlib lets go of the GIL for large buffers)."""
    h = hashlib.sha256()
    for _ in range(rounds):
        h.update(data)
    return h.digest()


@dataclasses.dataclass
class Slot:
    """One request's place in its connection's reply order."""
    reply: bytes | None = None  # None until computed
    future: Future[bytes] | None = None


@dataclasses.dataclass
class Session:
    """One connection's state (``conn.user_data``)."""
    pending: collections.deque[Slot] = dataclasses.field(default_factory=collections.deque)
    eof: bool = False  # the client half-closed: close once the last reply is out


class RpcServer(Handler):
    """Every connection's handler (one instance; each connection's queue in ``user_data``)."""

    def __init__(self, loop: Loop, pool: ThreadPoolExecutor, max_inflight: int) -> None:
        self.loop, self.pool, self.max_inflight = loop, pool, max_inflight
        self.inflight = self.answered = self.reordered = 0  # inflight: jobs in the pool
        self.stopping, self.drain_timeout_s = False, 10.0

    def on_connect(self, conn: Connection) -> None:
        conn.user_data = Session()

    def on_message(self, conn: Connection, msg: bytes) -> None:
        session: Session = conn.user_data
        rounds, data = int.from_bytes(msg[:4], "big"), msg[4:]
        if self.stopping:
            slot = Slot(ERR + b"shutting down")
        elif len(msg) < 4 or rounds < 1 or rounds * max(len(data), 64) > MAX_WORK:
            slot = Slot(ERR + b"bad request: need rounds >= 1, at most 2**28 bytes of work")
        else:
            slot = Slot()
            slot.future = self.pool.submit(work, rounds, data)
            self.inflight += 1
            # Runs in the pool thread (or here, if already done): hand over to the loop.
            slot.future.add_done_callback(
                lambda f: self.loop.call_soon_threadsafe(self.done, conn, slot, f))
        session.pending.append(slot)
        if len(session.pending) >= self.max_inflight:
            conn.pause_reading()  # enough queued for this client; TCP holds the rest
        self.send_ready(conn)

    def done(self, conn: Connection, slot: Slot, future: Future[bytes]) -> None:
        """On the loop: a job finished (or was cancelled because its client left)."""
        self.inflight -= 1
        if self.stopping and not self.inflight:
            self.loop.shutdown(self.drain_timeout_s)
        if future.cancelled():
            return
        slot.reply = ERR + b"internal error" if future.exception() else OK + future.result()
        pending = conn.user_data.pending
        if pending and pending[0] is not slot:
            self.reordered += 1  # it waits for an earlier reply
        self.send_ready(conn)

    def send_ready(self, conn: Connection) -> None:
        """Send the replies at the head of the queue that are ready, in order."""
        session: Session = conn.user_data
        while session.pending and session.pending[0].reply is not None:
            conn.send(session.pending.popleft().reply)
            self.answered += 1
        if len(session.pending) < self.max_inflight and not self.stopping:
            conn.resume_reading()
        if session.eof and not session.pending:
            conn.close()

    def on_eof(self, conn: Connection, remainder: bytes) -> bool:
        conn.user_data.eof = True
        return bool(conn.user_data.pending)  # True: keep writing until the last reply

    def on_codec_error(self, conn: Connection, exc: CodecError) -> None:
        # The connection closes after this (the library's rule), so the replies still being
        # computed could never be sent: drop them, and say why in one reply.
        self.abandon(conn)
        conn.send(ERR + str(exc).encode())

    def on_close(self, conn: Connection, reason: CloseReason) -> None:
        self.abandon(conn)

    def abandon(self, conn: Connection) -> None:
        for slot in conn.user_data.pending:
            if slot.future is not None:
                slot.future.cancel()  # not started yet: no CPU spent for a client gone
        conn.user_data.pending.clear()

    def stop(self, name: str, drain_timeout_s: float) -> None:
        """First signal: stop accepting and reading; once the pool is idle, drain (rpc.md)."""
        if self.stopping:
            self.loop.abort_all(f"second {name}")
            return
        log.info("%s: finishing %d job(s), then draining", name, self.inflight)
        self.stopping, self.drain_timeout_s = True, drain_timeout_s
        for listener in self.loop.listeners:
            listener.close()
        for conn in self.loop.connections():
            conn.pause_reading()
        if not self.inflight:
            self.loop.shutdown(drain_timeout_s)
        else:  # jobs that take longer lose their replies: the drain does not wait for them
            self.loop.call_later(drain_timeout_s, self.loop.shutdown, 1.0)


class RpcClient(Handler):
    """Pipelines the requests (the rest from ``on_writable``), checks each reply in turn."""

    def __init__(self, loop: Loop, requests: list[tuple[int, bytes]]) -> None:
        self.loop, self.requests = loop, requests
        self.sent = self.got = 0
        self.error: str | None = None

    def on_connect(self, conn: Connection) -> None:
        while self.sent < len(self.requests) and conn.writable:
            rounds, data = self.requests[self.sent]
            conn.send(rounds.to_bytes(4, "big") + data)
            self.sent += 1

    on_writable = on_connect

    def on_message(self, conn: Connection, reply: bytes) -> None:
        if reply != OK + work(*self.requests[self.got]):
            self.error = f"reply {self.got} is wrong: {reply[:40]!r}"
        self.got += 1
        if self.error or self.got == len(self.requests):
            conn.close()

    def on_close(self, conn: Connection, reason: CloseReason) -> None:
        where = "%s:%d" % conn.peer[:2]
        if reason in (CloseReason.CONNECT_FAILED, CloseReason.CONNECT_TIMEOUT):
            self.error = f"cannot connect to {where}: {conn.error}"
        elif self.error is None and self.got < len(self.requests):
            self.error = (f"the connection to {where} ended ({reason.value}) after "
                          f"{self.got} of {len(self.requests)} replies")
        self.loop.stop()


def run_client(args: argparse.Namespace) -> int:
    requests = [(args.slow_rounds if i % 8 == 0 else 1, b"request %d " % i * 400)
                for i in range(args.requests)]
    loop, started = Loop(), time.monotonic()
    client = RpcClient(loop, requests)
    loop.connect((args.host, args.port), lambda: client, lambda: LengthPrefixedCodec(4),
                 timeout_s=args.connect_timeout)
    try:
        loop.run()
    finally:
        loop.close()
    if client.error is not None:
        print(f"error: {client.error}", file=sys.stderr)
        return 1
    print(f"{client.got} replies, in order, all correct, in {time.monotonic() - started:.3f} s")
    return 0


def run_server(args: argparse.Namespace) -> int:
    loop = Loop()
    pool = ThreadPoolExecutor(args.threads, thread_name_prefix="rpc")
    server = RpcServer(loop, pool, args.max_inflight)
    listener = loop.listen((args.host, args.port), lambda: server,
                           lambda: LengthPrefixedCodec(4, args.max_frame))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop, sig.name, args.drain_timeout)
    print("listening on %s:%d" % listener.address[:2], flush=True)
    try:
        loop.run()
    finally:  # the pool first: its threads' last callbacks still wake the loop
        pool.shutdown(wait=True, cancel_futures=True)
        loop.close()
    log.info("answered %d requests; %d finished out of order and waited for an earlier one",
             server.answered, server.reordered)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("What it shows")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("mode", nargs="?", choices=("serve", "client"), default="serve")
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=9300, help="0 (server): any free port")
    add("--threads", type=int, default=4, metavar="N", help="server: pool threads")
    add("--max-frame", type=int, default=1 << 20, metavar="BYTES")
    add("--max-inflight", type=int, default=64, metavar="N",
        help="server: a connection's requests in the pool at most; then it is not read from")
    add("--drain-timeout", type=float, default=10.0, metavar="SEC")
    add("--requests", type=int, default=64, metavar="N", help="client: requests to pipeline")
    add("--slow-rounds", type=int, default=2000, metavar="N", help="client: every 8th's rounds")
    add("--connect-timeout", type=float, default=5.0, metavar="SEC")
    add("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return run_client(args) if args.mode == "client" else run_server(args)


if __name__ == "__main__":
    raise SystemExit(main())
