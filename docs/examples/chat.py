"""Line chat: every line a client sends goes to every other client, never back to it.

    python docs/examples/chat.py --port 9100      # then, in two other terminals:
    nc 127.0.0.1 9100

What it shows, and the library features it uses (docs/examples/chat.md explains the choices):

- ``reactor.broadcast``: one line queued for every other member, encoded once. A member
  that stopped reading (its send buffer above the high watermark even after the kernel took
  what it could) is skipped and counted, so it never holds the others back nor makes the
  server buffer for it without bound; a member that keeps up is never skipped.
- The write deadline (``ConnectionOptions.write_timeout_s``, ``--write-timeout``): a member
  that is skipped and takes no byte for that long is closed as a slow consumer (a reset).
- ``on_paused`` / ``on_writable``: when a member falls behind and catches up (logged, with
  how many lines it missed).
- The idle timeout (``idle_timeout_s``, ``on_idle``, ``--idle-timeout``): a member that
  sent nothing for that long is told so and dropped.
- ``drain_on_signals``: the first SIGTERM/SIGINT drains (``Loop.shutdown``), a second
  aborts; exit 0.
"""

from __future__ import annotations

import argparse
import logging

from handlers.line import LineCodec
from reactor import (CloseReason, CodecError, Connection, Handler, Loop, broadcast,
                     drain_on_signals)

log = logging.getLogger("chat")


class Member:
    """What the room knows of one client (kept in ``conn.user_data``)."""

    __slots__ = ("id", "prefix", "behind_at")

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.prefix = b"%d: " % conn_id  # every line it says goes out as "ID: line"
        self.behind_at: int | None = None  # room.lines when it fell behind; None: keeping up


class ChatRoom(Handler):
    """The one handler of every connection: the room is shared, per-client state lives in
    ``conn.user_data`` (a :class:`Member`)."""

    def __init__(self, max_line: int) -> None:
        self.codec = LineCodec(max_line)  # stateless: one instance serves every connection
        self.members: set[Connection] = set()
        self.lines = 0  # lines broadcast so far (chat lines and notices)
        self.skipped = 0  # deliveries skipped because the member was behind
        self.slow_closed = 0

    def tell_others(self, conn: Connection | None, line: bytes) -> None:
        """Queue ``line`` for every member but ``conn``; laggards are skipped, not waited for."""
        result = broadcast((c for c in self.members if c is not conn), line, self.codec)
        self.lines += 1
        self.skipped += result.skipped

    def on_connect(self, conn: Connection) -> None:
        member = conn.user_data = Member(conn.id)
        others = len(self.members)
        conn.send(b"* welcome, you are client %d; %d other(s) here" % (member.id, others))
        self.tell_others(None, b"* client %d joined" % member.id)
        self.members.add(conn)

    def on_message(self, conn: Connection, line: bytes) -> None:
        self.tell_others(conn, conn.user_data.prefix + line)

    def on_paused(self, conn: Connection) -> None:
        conn.user_data.behind_at = self.lines
        log.info("client %d fell behind: lines to it are skipped", conn.user_data.id)

    def on_writable(self, conn: Connection) -> None:
        member: Member = conn.user_data
        if member.behind_at is not None:
            log.info("client %d caught up after %d skipped lines", member.id,
                     self.lines - member.behind_at)
            member.behind_at = None

    def on_idle(self, conn: Connection) -> None:
        log.info("client %d idle: dropped", conn.user_data.id)
        conn.send(b"* you sent nothing for too long, bye")
        self.leave(conn, CloseReason.IDLE_TIMEOUT)
        conn.close(CloseReason.IDLE_TIMEOUT)

    def on_codec_error(self, conn: Connection, exc: CodecError) -> None:
        conn.send(b"* line too long, bye")
        self.leave(conn, exc.reason)
        conn.close(exc.reason)

    def leave(self, conn: Connection, reason: CloseReason) -> None:
        """Out of the room, the others told, once: from ``on_close``, or before we close it
        ourselves (a graceful close waits up to ``linger_s`` for the client's FIN before
        ``on_close``: too long to keep telling it the others' lines)."""
        if conn in self.members:
            self.members.discard(conn)
            self.tell_others(None, b"* client %d left (%s)" % (conn.user_data.id,
                                                              reason.value.encode()))

    def on_close(self, conn: Connection, reason: CloseReason) -> None:
        member: Member = conn.user_data
        if reason is CloseReason.SLOW_CONSUMER:
            self.slow_closed += 1
            missed = self.lines - member.behind_at if member.behind_at is not None else 0
            log.warning("client %d closed as a slow consumer after %d skipped lines",
                        member.id, missed)
        self.leave(conn, reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("What it shows")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0: any free port")
    parser.add_argument("--idle-timeout", type=float, default=300.0, metavar="SEC",
                        help="drop a client that sent nothing for SEC (0: never)")
    parser.add_argument("--write-timeout", type=float, default=10.0, metavar="SEC",
                        help="close a client that is behind and takes no byte for SEC")
    parser.add_argument("--max-line", type=int, default=4096, metavar="BYTES")
    parser.add_argument("--drain-timeout", type=float, default=5.0, metavar="SEC")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    loop = Loop()
    room = ChatRoom(args.max_line)
    listener = loop.listen((args.host, args.port), lambda: room, lambda: room.codec,
                           idle_timeout_s=args.idle_timeout, write_timeout_s=args.write_timeout)
    drain_on_signals(loop, args.drain_timeout, before=lambda name: log.info(
        "%s: draining %d client(s)", name, loop.connection_count))
    host, port = listener.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        loop.run()
    finally:
        loop.close()
    log.info("relayed %d lines; %d deliveries skipped for clients behind; "
             "%d clients closed as slow consumers", room.lines, room.skipped, room.slow_closed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
