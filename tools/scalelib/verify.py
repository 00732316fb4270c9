"""What a connection must get back, and the kinds of failure: sans-IO and pure.

A connection sends two lines, each made from (client process, connection index, round), and
must get each back byte for byte, in order. Between lines, before the first and after the
last, the server may send heartbeat ``PING\\n`` lines: they are counted, never a failure.
Anything else (a changed, missing or extra byte, an ``ERR`` line) fails the connection.
``scan`` judges received bytes against the one line a connection waits for; the client
keeps, per connection, only the partial line left over (almost always nothing).
"""

from __future__ import annotations

import enum
import errno
from typing import Iterable, Sequence

PING = b"PING\n"  # line-echo --heartbeat


class Failure(enum.StrEnum):
    """Why a connection failed; each connection fails once, with its first failure."""

    CONNECT_REFUSED = "connect_refused"    # ECONNREFUSED: nothing listens, or the backlog is full
    CONNECT_TIMEOUT = "connect_timeout"    # no SYN-ACK within --connect-timeout, or ETIMEDOUT
    ADDR_UNAVAILABLE = "addr_unavailable"  # EADDRNOTAVAIL/EADDRINUSE: no ephemeral port left
    FD_LIMIT = "fd_limit"                  # EMFILE/ENFILE: no fd for the socket
    RESET = "reset"                        # ECONNRESET/EPIPE after the connect
    CLOSED_EARLY = "closed_early"          # EOF before both lines came back
    MISMATCH = "mismatch"                  # a byte changed, missing or extra
    ERR_LINE = "err_line"                  # an ERR line instead of the echo (server full, ...)
    TIMEOUT = "timeout"                    # no echo within --echo-timeout, or the run's deadline
    OTHER = "other"                        # any other errno, or a short send of a line
    CLIENT_LOST = "client_lost"            # its client process died without a report


def failure_of_errno(err: int, connecting: bool) -> Failure:
    """The kind of a socket error; ``connecting``: it came from socket/bind/connect."""
    if err == errno.ECONNREFUSED:
        return Failure.CONNECT_REFUSED
    if err == errno.ETIMEDOUT:
        return Failure.CONNECT_TIMEOUT if connecting else Failure.TIMEOUT
    if err in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
        return Failure.ADDR_UNAVAILABLE
    if err in (errno.EMFILE, errno.ENFILE):
        return Failure.FD_LIMIT
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return Failure.RESET
    return Failure.OTHER


def line(proc: int, conn: int, round_: int) -> bytes:
    """The line connection ``conn`` (a global index) of client process ``proc`` sends in
    round 0 (at connect) or 1 (after the hold). Unique per connection and round, never
    starting with the P of a heartbeat."""
    return b"scale %d %d %s\n" % (proc, conn, b"hold" if round_ else b"connect")


class Scan(enum.Enum):
    MATCHED = "matched"    # the expected line came whole; the bytes after it are unscanned
    PENDING = "pending"    # no verdict yet: keep the partial line and scan again with more
    MISMATCH = "mismatch"  # a line, or the start of one, that is neither a PING nor expected


def scan(data: bytes, expected: bytes | None) -> tuple[Scan, int, bytes]:
    """Judge ``data`` (the bytes received since the last whole line accounted for) against
    ``expected``, the one line the connection waits for; ``None``: it waits for none, and only
    heartbeats may come. Returns (verdict, PINGs seen, rest): for MATCHED, the bytes after the
    expected line, not yet scanned; for PENDING, the partial line to keep (``b""``: none); for
    MISMATCH, the bytes from the offending line on (for a sample). A partial line is judged as
    soon as it can be: one that is no prefix of ``PING\\n`` or of ``expected`` is a mismatch."""
    pings = 0
    at, n = 0, len(data)
    while at < n:
        end = data.find(b"\n", at) + 1
        if not end:
            tail = data[at:]
            if PING.startswith(tail) or (expected is not None and expected.startswith(tail)):
                return Scan.PENDING, pings, tail
            return Scan.MISMATCH, pings, tail
        if end - at == len(PING) and data.startswith(PING, at):
            pings += 1
        elif expected is not None and end - at == len(expected) and data.startswith(expected, at):
            return Scan.MATCHED, pings, data[end:]
        else:
            return Scan.MISMATCH, pings, data[at:]
        at = end
    return Scan.PENDING, pings, b""


def mismatch_kind(rest: bytes) -> Failure:
    """A mismatch whose offending line is the server's ``ERR ...`` is ERR_LINE."""
    return Failure.ERR_LINE if rest.startswith(b"ERR ") else Failure.MISMATCH


def verify_stream(lines: Sequence[bytes], chunks: Iterable[bytes]) -> tuple[Failure | None, int]:
    """The verdict on everything one connection received (``chunks`` as recv returned them,
    then EOF): (None, pings) if ``lines`` came back in order with only PINGs around them;
    otherwise the failure: MISMATCH or ERR_LINE, or CLOSED_EARLY if EOF came before the last
    line was whole. A partial line left after the last echo is a MISMATCH (extra bytes)."""
    k, pending, pings = 0, b"", 0
    for chunk in chunks:
        data = pending + chunk
        while True:
            verdict, p, data = scan(data, lines[k] if k < len(lines) else None)
            pings += p
            if verdict is Scan.MATCHED:
                k += 1
            elif verdict is Scan.MISMATCH:
                return mismatch_kind(data), pings
            else:
                pending = data
                break
    if k < len(lines):
        return Failure.CLOSED_EARLY, pings
    return (Failure.MISMATCH if pending else None), pings
