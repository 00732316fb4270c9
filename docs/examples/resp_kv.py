"""resp_kv: an in-memory key/value server that real Redis clients talk to, on the reactor.

    python docs/examples/resp_kv.py --port 6380
    redis-cli -p 6380 set greeting hello ex 60
    redis-benchmark -p 6380 -P 16 -c 50 -t ping,set,get,incr -q

What it shows (docs/examples/resp_kv.md has more):

* ``handlers/resp.py``'s ``RespCodec`` (RESP2, sans-IO) under a handler with ``on_batch``:
  every complete command of a read arrives in one call, the replies leave in one write.
  The codec's caps hold whatever the split of the bytes: a bad or oversized request is
  answered ``-ERR Protocol error: ...`` and the connection closes, as redis-server does.
* Expiry on the loop's timer wheel: one timer per expiring key, rearmed or cancelled when
  the key is overwritten, deleted or given another TTL, and checked on access too, so a
  key is never seen after its deadline even before its timer has fired.
* A graceful stop: SIGTERM or SIGINT drains every connection (their pending commands are
  answered) and the process exits 0; a second signal stops at once.

Commands: PING, ECHO, SET (EX, PX, NX, XX), GET, DEL, EXISTS, INCR, DECR, INCRBY, DECRBY,
MGET, MSET, EXPIRE, TTL, PTTL, DBSIZE, FLUSHDB, QUIT, and what clients send when they
connect (SELECT 0, CLIENT SETINFO/SETNAME, CONFIG GET, COMMAND; HELLO is refused, so RESP3
clients such as redis-py fall back to RESP2). Anything else gets redis's "unknown command".
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Callable

from handlers.resp import DEFAULT_MAX_BULK, RespCodec, RespProtocolError, array, bulk, error
from reactor import CodecError, Handler, Loop, Timer, Transport, drain_on_signals

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
NOT_AN_INTEGER = error("ERR value is not an integer or out of range")
SYNTAX = error("ERR syntax error")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: What CONFIG GET answers: redis-benchmark asks for "save" and "appendonly" at start.
CONFIG = {b"save": b"", b"appendonly": b"no", b"databases": b"1"}

Args = list[bytes]


def to_int(value: bytes) -> int | None:
    """``value`` as a signed 64-bit integer written the canonical way (redis's
    string2ll: no sign but ``-``, no leading zero, no space), else None. The canonical
    spelling is the one Python writes back."""
    if len(value) > 20:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if b"%d" % n == value and INT64_MIN <= n <= INT64_MAX else None


def clean(text: bytes) -> bytes:
    """Peer bytes quoted in an error reply must not end its line."""
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


class Store:
    """The keys, their values and their expiry timers; each command is a method that
    takes the command's words and returns the reply's wire bytes."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        # A value is bytes, or an int once INCR has made it a counter (as redis keeps an
        # integer-looking string as a number): counting then parses and formats nothing.
        self.data: dict[bytes, bytes | int] = {}
        self.timers: dict[bytes, Timer] = {}  # keys with a TTL only
        # name -> (method, arity): arity n means exactly n words, -n at least n (redis's rule).
        self.commands: dict[bytes, tuple[Callable[[Args], bytes], int]] = {
            b"PING": (self.ping, -1), b"ECHO": (lambda a: bulk(a[1]), 2),
            b"GET": (self.get, 2), b"SET": (self.set, -3), b"DEL": (self.delete, -2),
            b"EXISTS": (self.exists, -2), b"MGET": (self.mget, -2), b"MSET": (self.mset, -3),
            b"INCR": (self.incr, 2), b"DECR": (lambda a: self.incr(a, -1), 2),
            b"INCRBY": (lambda a: self.add_by(a, 1), 3),  # what redis-py's incr() sends
            b"DECRBY": (lambda a: self.add_by(a, -1), 3),
            b"EXPIRE": (self.expire, 3), b"TTL": (self.ttl, 2), b"PTTL": (self.ttl, 2),
            b"DBSIZE": (lambda a: b":%d\r\n" % len(self.data), 1),
            b"FLUSHDB": (self.flushdb, -1), b"SELECT": (self.select, 2),
            # What clients send when they connect: redis-benchmark CONFIG GET, redis-py CLIENT
            # SETINFO and HELLO 3 (refused with redis's NOPROTO: it then speaks RESP2).
            b"CLIENT": (self.client, -2), b"CONFIG": (self.config, -2),
            b"COMMAND": (lambda a: b"*0\r\n", -1),
            b"HELLO": (lambda a: error("NOPROTO sorry, this protocol version is not supported"),
                       -1),
        }

    # -- keys and their expiry --------------------------------------------------------

    def lookup(self, key: bytes) -> bytes | int | None:
        """The live value of ``key``: a key past its deadline is dropped here even if its
        timer has not fired yet (timers fire once per loop iteration, never early)."""
        timer = self.timers.get(key)
        if timer is not None and self.loop.time() >= timer.when:
            self.drop(key)
            return None
        return self.data.get(key)

    def drop(self, key: bytes) -> bool:
        timer = self.timers.pop(key, None)
        if timer is not None:
            self.loop.cancel_timer(timer)
        return self.data.pop(key, None) is not None

    def expire_in(self, key: bytes, seconds: float) -> None:
        """Give ``key`` a deadline, reusing its timer if it has one (an O(1) rearm)."""
        timer = self.timers.get(key)
        if timer is None:
            self.timers[key] = self.loop.call_later(seconds, self.expired, key)
        else:
            self.loop.rearm(timer, seconds)

    def expired(self, key: bytes) -> None:
        del self.timers[key]
        del self.data[key]

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key``, dropping its TTL (as SET and MSET do)."""
        if key in self.timers:
            self.loop.cancel_timer(self.timers.pop(key))
        self.data[key] = value

    # -- commands -----------------------------------------------------------------------

    def ping(self, args: Args) -> bytes:
        if len(args) > 2:
            return wrong_arity(args)
        return b"+PONG\r\n" if len(args) == 1 else bulk(args[1])

    def get(self, args: Args) -> bytes:
        key = args[1]
        value = self.lookup(key) if key in self.timers else self.data.get(key)
        if value is None:
            return NIL
        if type(value) is int:
            value = b"%d" % value
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def set(self, args: Args) -> bytes:
        if len(args) > 3:
            return self.set_with_options(args)
        self.put(args[1], args[2])
        return OK

    def set_with_options(self, args: Args) -> bytes:
        key, value = args[1], args[2]
        ttl_ms = cond = None
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if opt in (b"NX", b"XX") and cond is None:
                cond = opt
            elif opt in (b"EX", b"PX") and ttl_ms is None and i + 1 < len(args):
                n = to_int(args[i + 1])
                if n is None:
                    return NOT_AN_INTEGER
                ttl_ms = n * 1000 if opt == b"EX" else n
                if not 0 < ttl_ms <= INT64_MAX:
                    return error("ERR invalid expire time in 'set' command")
                i += 1
            else:
                return SYNTAX
            i += 1
        if cond is not None and (self.lookup(key) is None) != (cond == b"NX"):
            return NIL  # NX and the key exists, or XX and it does not
        self.put(key, value)
        if ttl_ms is not None:
            self.expire_in(key, ttl_ms / 1000)
        return OK

    def delete(self, args: Args) -> bytes:
        return b":%d\r\n" % sum(self.lookup(k) is not None and self.drop(k) for k in args[1:])

    def exists(self, args: Args) -> bytes:
        return b":%d\r\n" % sum(self.lookup(k) is not None for k in args[1:])

    def add_by(self, args: Args, sign: int) -> bytes:
        by = to_int(args[2])
        return NOT_AN_INTEGER if by is None else self.incr(args, sign * by)

    def incr(self, args: Args, by: int = 1) -> bytes:
        key = args[1]
        value = self.lookup(key) if key in self.timers else self.data.get(key)
        if value is None:
            n = by
        else:
            n = value if type(value) is int else to_int(value)  # type: ignore[arg-type]
            if n is None:
                return NOT_AN_INTEGER
            n += by
            if not INT64_MIN <= n <= INT64_MAX:
                return error("ERR increment or decrement would overflow")
        self.data[key] = n  # as redis, the TTL stays
        return b":%d\r\n" % n

    def mget(self, args: Args) -> bytes:
        values = [self.lookup(k) for k in args[1:]]
        return array([b"%d" % v if type(v) is int else v for v in values])  # counters as bulks

    def mset(self, args: Args) -> bytes:
        if len(args) % 2 == 0:
            return wrong_arity(args)
        for i in range(1, len(args), 2):
            self.put(args[i], args[i + 1])
        return OK

    def expire(self, args: Args) -> bytes:
        key, seconds = args[1], to_int(args[2])
        if seconds is None:
            return NOT_AN_INTEGER
        if seconds > INT64_MAX // 1000:
            return error("ERR invalid expire time in 'expire' command")
        if self.lookup(key) is None:
            return b":0\r\n"
        if seconds <= 0:  # as redis: a deadline in the past deletes the key now
            self.drop(key)
        else:
            self.expire_in(key, seconds)
        return b":1\r\n"

    def ttl(self, args: Args) -> bytes:
        if self.lookup(args[1]) is None:
            return b":-2\r\n"
        timer = self.timers.get(args[1])
        if timer is None:
            return b":-1\r\n"
        ms = max(0, int((timer.when - self.loop.time()) * 1000))
        return b":%d\r\n" % (ms if args[0].upper() == b"PTTL" else (ms + 500) // 1000)

    def flushdb(self, args: Args) -> bytes:
        for key in list(self.timers):
            self.drop(key)
        self.data.clear()
        return OK

    def select(self, args: Args) -> bytes:
        if to_int(args[1]) is None:
            return NOT_AN_INTEGER
        return OK if args[1] == b"0" else error("ERR DB index is out of range")

    def client(self, args: Args) -> bytes:  # redis-py and redis-cli name themselves
        return OK if args[1].upper() in (b"SETINFO", b"SETNAME") else unknown_subcommand(args)

    def config(self, args: Args) -> bytes:
        if args[1].upper() != b"GET" or len(args) < 3:
            return unknown_subcommand(args)
        return array([x for name, value in CONFIG.items()
                      if any(fnmatch.fnmatchcase(name, p.lower()) for p in args[2:])
                      for x in (name, value)])


# -- errors, in redis's words ------------------------------------------------------------


def wrong_arity(args: Args) -> bytes:
    name = clean(args[0].lower()).decode("utf-8", "replace")
    return error(f"ERR wrong number of arguments for '{name}' command")


def unknown_subcommand(args: Args) -> bytes:
    return error(b"ERR unknown subcommand '%s'. Try %s HELP."
                 % (clean(args[1][:128]), clean(args[0].upper()[:32])))


def unknown_command(args: Args) -> bytes:
    quoted = b"".join(b"'%s' " % clean(a[:128]) for a in args[1:8])
    return error(b"ERR unknown command '%s', with args beginning with: %s"
                 % (clean(args[0][:128]), quoted))


class KVHandler(Handler):
    """One instance serves every connection: the state is the shared ``Store``."""

    __slots__ = ("store", "decoder")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.decoder = RespCodec()  # frames_of() only: what each connection's codec found

    def on_batch(self, conn: Transport, data: bytes) -> None:  # type: ignore[override]
        """Every complete command of one read: run them in order, reply in one write."""
        commands = self.store.commands
        replies = []
        for args in self.decoder.frames_of(data):
            entry = commands.get(args[0])
            if entry is None:
                name = args[0].upper()
                if name == b"QUIT":
                    replies.append(OK)
                    conn.write(b"".join(replies))
                    conn.close()  # graceful: the replies are flushed first
                    return
                entry = commands.get(name)
                if entry is None:
                    replies.append(unknown_command(args))
                    continue
            run, arity = entry
            n = len(args)
            if n == arity or (arity < 0 and n >= -arity):
                replies.append(run(args))
            else:
                replies.append(wrong_arity(args))
        conn.write(b"".join(replies))

    def on_codec_error(self, conn: Transport, exc: CodecError) -> None:
        """Bad bytes (or a request over a cap): say why on one line, then close."""
        if isinstance(exc, RespProtocolError):
            conn.write(error(f"ERR Protocol error: {exc}"))
        conn.close(exc.reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An in-memory key/value server speaking "
                                     "RESP2 (redis-cli, redis-py, redis-benchmark).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=6380, help="TCP port (6380; 0: any)")
    parser.add_argument("--max-bulk", type=int, default=DEFAULT_MAX_BULK, metavar="BYTES",
                        help="largest bulk string accepted (512 MiB, as redis)")
    parser.add_argument("--drain-timeout", type=float, default=10.0, metavar="S",
                        help="how long SIGTERM waits for connections to finish (10 s)")
    args = parser.parse_args(argv)
    if args.max_bulk < 1:
        parser.error("--max-bulk must be at least 1")

    loop = Loop()
    handler = KVHandler(Store(loop))
    listener = loop.listen((args.host, args.port), lambda: handler,
                           lambda: RespCodec(max_bulk=args.max_bulk))
    drain_on_signals(loop, args.drain_timeout)  # stop accepting, answer what was sent, close
    host, port = listener.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        loop.run()
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
