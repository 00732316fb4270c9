"""WebSocket chat: every message a client sends goes to every other client, never back to it.

    python docs/examples/ws_chat.py --port 8765        # then, in two other terminals:
    python -m websockets ws://127.0.0.1:8765/

(or ``new WebSocket("ws://127.0.0.1:8765/")`` in a browser's console; docs/examples/ws_chat.md.)
Needs wsproto (``pip install .[examples]``). What it shows:

- ``handlers/websocket.py``: a ``WebSocketHandler`` per connection over a ``WebSocketCodec``
  (wsproto inside) does the upgrade, answers pings, runs the close handshake and fails a
  connection that breaks the protocol (1002) or sends a message over ``--max-message``
  (1009). This file only says what a chat does with whole messages.
- ``broadcast_message``: a message is framed once and the same bytes are queued for every
  other member by ``reactor.broadcast``, which skips (and counts) a member whose send buffer
  is over its high watermark even after the kernel took what it could, so a client that
  stops reading never holds the others back. One that stays behind and takes no byte for
  ``--write-timeout`` is closed as a slow consumer (the reactor's write deadline).
- ``--idle-timeout``: a client that sent nothing (pings count) for that long gets Close 1001.
- SIGTERM/SIGINT: every client gets Close 1001 "server shutting down", the loop drains and
  closes, and the process exits 0; a second signal drops everything at once.
"""

from __future__ import annotations

import argparse
import logging

from handlers.websocket import GOING_AWAY, WebSocketCodec, WebSocketHandler, broadcast_message
from reactor import CloseReason, Loop, Transport, drain_on_signals

log = logging.getLogger("ws_chat")

#: How long the upgrade request or a frame may take to arrive once begun (slowloris).
FRAME_TIMEOUT_S = 30.0
#: How long our Close waits for the client's before the TCP connection is closed anyway.
CLOSE_TIMEOUT_S = 5.0


class Room:
    """Who is here, and the books: one per server."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.members: dict[Transport, Member] = {}
        self.messages = 0  # messages relayed
        self.skipped = 0  # deliveries skipped because the member was behind
        self.slow_closed = 0  # members closed as slow consumers

    def relay(self, sender: Member, data: str | bytes) -> None:
        """``data`` to every member but its sender, framed once; laggards are skipped."""
        # Only open WebSockets: a member we already sent a Close must get no data frame.
        result = broadcast_message((c for c, m in self.members.items()
                                    if m is not sender and m.ws_open), data)
        self.messages += 1
        self.skipped += result.skipped

    def close_all(self) -> None:
        for member in list(self.members.values()):
            member.ws_close(GOING_AWAY, "server shutting down", CloseReason.SHUTDOWN)


class Member(WebSocketHandler):
    """One client. A new one per connection: the WebSocket state is per connection."""

    def __init__(self, room: Room) -> None:
        super().__init__(room.loop, close_timeout_s=CLOSE_TIMEOUT_S)  # the loop times our Close
        self.room = room
        self.behind_at: int | None = None  # room.messages when it fell behind

    def on_ws_connect(self, conn: Transport) -> None:
        self.room.members[conn] = self
        log.info("client %d joined (%d here)", conn.id, len(self.room.members))

    def on_ws_message(self, conn: Transport, data: str | bytes) -> None:
        self.room.relay(self, data)

    def on_paused(self, conn: Transport) -> None:
        self.behind_at = self.room.messages
        log.info("client %d fell behind: messages to it are skipped", conn.id)

    def on_writable(self, conn: Transport) -> None:
        if self.behind_at is not None:
            log.info("client %d caught up after %d skipped messages", conn.id,
                     self.room.messages - self.behind_at)
            self.behind_at = None

    def on_ws_close(self, conn: Transport, code: int, reason: str) -> None:
        if self.room.members.pop(conn, None) is not None:
            log.info("client %d left (%d%s)", conn.id, code, f" {reason}" if reason else "")

    def on_close(self, conn: Transport, reason: CloseReason) -> None:
        if reason is CloseReason.SLOW_CONSUMER:
            self.room.slow_closed += 1
            log.warning("client %d closed as a slow consumer", conn.id)
        super().on_close(conn, reason)  # on_ws_close, if the WebSocket was still open


def on_signals(loop: Loop, room: Room) -> None:
    """First SIGTERM/SIGINT: Close 1001 to everyone, then drain and stop. A second: abort."""
    def going_away(name: str) -> None:
        log.info("%s: closing %d client(s)", name, len(room.members))
        room.close_all()  # the Close frames are queued first: the drain flushes them

    drain_on_signals(loop, CLOSE_TIMEOUT_S, before=going_away)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat over WebSocket (see the docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument("--idle-timeout", type=float, default=300.0, metavar="SEC",
                        help="close a client that sent nothing for SEC (0: never)")
    parser.add_argument("--max-message", type=int, default=1 << 20, metavar="BYTES",
                        help="largest message accepted; a larger one gets Close 1009")
    parser.add_argument("--write-timeout", type=float, default=10.0, metavar="SEC",
                        help="close a client that is behind and takes no byte for SEC")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if args.max_message < 0 or args.idle_timeout < 0 or args.write_timeout < 0:
        parser.error("--max-message, --idle-timeout and --write-timeout must not be negative")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    loop = Loop()
    room = Room(loop)
    listener = loop.listen(
        (args.host, args.port), lambda: Member(room),
        lambda: WebSocketCodec(max_message=args.max_message),
        idle_timeout_s=args.idle_timeout, write_timeout_s=args.write_timeout,
        frame_timeout_s=FRAME_TIMEOUT_S)
    on_signals(loop, room)
    host, port = listener.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        loop.run()
    finally:
        loop.close()
    log.info("relayed %d messages; %d deliveries skipped for clients behind; "
             "%d clients closed as slow consumers", room.messages, room.skipped, room.slow_closed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
