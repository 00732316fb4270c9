"""Push gateway: subscribers follow topics, producers publish to them on a second listener.

    python docs/examples/push.py --port 9200 --publish-unix /tmp/push.sock
    nc 127.0.0.1 9200                                  # then type: SUB news
    echo 'PUB news hello' | socat - UNIX-CONNECT:/tmp/push.sock

Subscribers (``--port``), one command a line, each answered with one line:
``SUB topic`` / ``UNSUB topic`` -> ``OK SUB topic`` / ``OK UNSUB topic``; messages then
arrive as ``MSG topic payload``. When a subscriber has been sent nothing for ``--heartbeat``
seconds it gets ``PING`` and must answer ``PONG`` before the next heartbeat, or it is dropped.
Producers (``--publish-unix PATH``, else ``--publish-port``): ``PUB topic payload`` ->
``OK n``, n being the subscribers it was queued for. Anything else: one ``ERR ...`` line.

What it shows, and the library features it uses (docs/examples/push.md explains the choices):

- Two listeners on one loop, each with its own handler and options: TCP for subscribers,
  a unix socket (mode 0600: only this user's processes may publish) or TCP for producers.
- ``reactor.broadcast`` over one topic's subscribers: a subscriber above its high watermark
  (even after the kernel took what it could) is skipped and counted; the write deadline
  (``write_timeout_s``) then closes it. A subscriber that keeps up is never skipped, not
  even for a producer's burst read and published in one loop iteration.
- Heartbeats on the timer wheel: ``heartbeat_s`` makes the connection call ``on_heartbeat``
  after that long with nothing sent; the handler pings, and drops whoever did not answer.
- ``drain_on_signals``: the first SIGTERM/SIGINT drains (``Loop.shutdown``), a second
  aborts; exit 0.
"""

from __future__ import annotations

import argparse
import logging

from handlers.line import LineCodec
from reactor import CloseReason, Connection, Handler, Loop, broadcast, drain_on_signals

log = logging.getLogger("push")

MAX_TOPIC = 64


def valid_topic(topic: bytes) -> bool:
    return 0 < len(topic) <= MAX_TOPIC and b" " not in topic


class Gateway:
    """The topics and their subscribers, shared by both listeners' handlers."""

    def __init__(self, max_line: int) -> None:
        self.codec = LineCodec(max_line)  # stateless: one instance serves every connection
        self.topics: dict[bytes, set[Connection]] = {}
        self.published = self.delivered = self.skipped = self.no_pong = self.slow = 0

    def subscribe(self, conn: Connection, topic: bytes) -> None:
        self.topics.setdefault(topic, set()).add(conn)
        conn.user_data.topics.add(topic)

    def unsubscribe(self, conn: Connection, topic: bytes) -> None:
        subs = self.topics.get(topic)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.topics[topic]
        conn.user_data.topics.discard(topic)

    def publish(self, topic: bytes, payload: bytes) -> int:
        """Queue ``MSG topic payload`` for every subscriber of ``topic`` that keeps up."""
        self.published += 1
        subs = self.topics.get(topic)
        if not subs:
            return 0
        result = broadcast(subs, b"MSG %s %s" % (topic, payload), self.codec)
        self.delivered += result.sent
        self.skipped += result.skipped
        return result.sent


class SubscriberState:
    __slots__ = ("topics", "awaiting_pong")

    def __init__(self) -> None:
        self.topics: set[bytes] = set()
        self.awaiting_pong = False


class Subscriber(Handler):
    """Every subscriber connection's handler (one instance; state in ``conn.user_data``)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def on_connect(self, conn: Connection) -> None:
        conn.user_data = SubscriberState()

    def on_message(self, conn: Connection, line: bytes) -> None:
        verb, _, topic = line.partition(b" ")
        if line == b"PONG":
            conn.user_data.awaiting_pong = False
        elif verb in (b"SUB", b"UNSUB"):
            if not valid_topic(topic):
                conn.send(b"ERR usage: %s topic (1 to %d bytes, no spaces)" % (verb, MAX_TOPIC))
                return
            (self.gw.subscribe if verb == b"SUB" else self.gw.unsubscribe)(conn, topic)
            conn.send(b"OK " + line)
        else:
            conn.send(b"ERR unknown command; use SUB topic, UNSUB topic or PONG")

    def on_heartbeat(self, conn: Connection) -> None:
        """Nothing was sent to it for ``heartbeat_s``: ping it, or drop it if the last ping
        is still unanswered. (A subscriber being sent messages is not pinged: if it stops
        reading them, the write deadline ends it instead.)"""
        state: SubscriberState = conn.user_data
        if state.awaiting_pong:
            self.gw.no_pong += 1
            log.info("subscriber %d did not answer PING: dropped", conn.id)
            self.drop(conn)
            conn.close(CloseReason.IDLE_TIMEOUT)
        else:
            state.awaiting_pong = True
            conn.send(b"PING")

    def drop(self, conn: Connection) -> None:
        for topic in list(conn.user_data.topics):
            self.gw.unsubscribe(conn, topic)

    def on_close(self, conn: Connection, reason: CloseReason) -> None:
        if reason is CloseReason.SLOW_CONSUMER:
            self.gw.slow += 1
            log.warning("subscriber %d closed as a slow consumer", conn.id)
        self.drop(conn)


class Producer(Handler):
    """Every producer connection's handler: ``PUB topic payload`` -> ``OK n``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def on_message(self, conn: Connection, line: bytes) -> None:
        verb, _, rest = line.partition(b" ")
        topic, space, payload = rest.partition(b" ")
        if verb != b"PUB" or not space or not valid_topic(topic):
            conn.send(b"ERR usage: PUB topic payload")
            return
        conn.send(b"OK %d" % self.gw.publish(topic, payload))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("What it shows")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200, help="subscribers; 0: any free port")
    parser.add_argument("--publish-unix", metavar="PATH", help="producers' unix socket")
    parser.add_argument("--publish-port", type=int, default=9201, metavar="PORT",
                        help="producers' TCP port on 127.0.0.1, unless --publish-unix")
    parser.add_argument("--heartbeat", type=float, default=5.0, metavar="SEC",
                        help="PING a subscriber sent nothing for SEC; no PONG by the next: drop")
    parser.add_argument("--write-timeout", type=float, default=10.0, metavar="SEC",
                        help="close a subscriber that is behind and takes no byte for SEC")
    parser.add_argument("--max-line", type=int, default=65536, metavar="BYTES")
    parser.add_argument("--drain-timeout", type=float, default=5.0, metavar="SEC")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    loop = Loop()
    gw = Gateway(args.max_line)
    subscriber, producer = Subscriber(gw), Producer(gw)  # each serves all its connections
    subscribers = loop.listen((args.host, args.port), lambda: subscriber, lambda: gw.codec,
                              heartbeat_s=args.heartbeat, write_timeout_s=args.write_timeout)
    if args.publish_unix:
        loop.listen(args.publish_unix, lambda: producer, lambda: gw.codec, unix_mode=0o600)
        where = f"unix:{args.publish_unix}"
    else:
        producers = loop.listen(("127.0.0.1", args.publish_port), lambda: producer,
                                lambda: gw.codec)
        where = "%s:%d" % producers.address[:2]
    drain_on_signals(loop, args.drain_timeout, before=lambda name: log.info(
        "%s: draining %d connection(s)", name, loop.connection_count))
    print("listening on %s:%d" % subscribers.address[:2], flush=True)
    print(f"publishing on {where}", flush=True)
    try:
        loop.run()
    finally:
        loop.close()
    log.info("published %d messages: %d deliveries, %d skipped for subscribers behind; "
             "%d subscribers dropped for no PONG, %d closed as slow consumers",
             gw.published, gw.delivered, gw.skipped, gw.no_pong, gw.slow)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
