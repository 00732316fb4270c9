"""LineCodec: newline-terminated frames, sans-IO.

This module owns line framing only: it reads complete lines out of a receive
:class:`~reactor.ring.RingBuffer` and writes encoded lines into a send ring. It
never touches a socket, the loop or a clock, so tests drive it with plain rings.
"""

from __future__ import annotations

from reactor.errors import LineTimeout, LineTooLong
from reactor.ring import RingBuffer

__all__ = ["LineCodec"]

_NL = b"\n"


class LineCodec:
    """Lines ending in ``b"\\n"``, each at most ``max_line`` bytes *including* the newline.

    The limit is exact and independent of how TCP split the bytes (the bug in
    twisted#6556): a line of ``max_line`` bytes with its newline is accepted,
    one byte more is refused. A ``b"\\r"`` before the newline is part of the
    line; bytes are never decoded, so NUL and invalid UTF-8 pass through.

    How far it has already searched is kept in the ring (``RingBuffer.scan``;
    h11's ``_next_line_search``, Netty's ``offset``), so a line that arrives one
    byte at a time is scanned once overall, and the codec holds no per-connection
    state: one instance may serve every connection. For that to hold, between
    calls the receive ring may only be appended to, never consumed by anyone else.
    """

    __slots__ = ("max_frame_bytes",)

    #: What the connection raises when a partial line outlives ``frame_timeout_s``.
    frame_timeout_error = LineTimeout

    def __init__(self, max_line: int = 65536) -> None:
        """``ValueError`` if ``max_line < 1``. 64 KiB is asyncio's ``StreamReader`` limit."""
        if max_line < 1:
            raise ValueError(f"max_line {max_line} must be at least 1")
        self.max_frame_bytes = max_line

    def maybe_take_frame(self, buf: RingBuffer) -> bytes | None:
        """Consume and return the next complete line without its ``b"\\n"``; ``None`` if none yet.

        Raises :class:`~reactor.errors.LineTooLong` when the next line is longer
        than ``max_line``: as soon as ``max_line`` bytes are buffered with no
        newline among them, whether or not the rest of the line has arrived.
        The error's ``size`` is the whole line's if its newline is buffered,
        else a lower bound (``max(len(buf), max_line + 1)``).
        """
        limit = self.max_frame_bytes
        n = len(buf)
        end = n if n < limit else limit
        i = buf.find(_NL, buf.scan, end)
        if i < 0:
            if n >= limit:
                raise self._too_long(buf)
            buf.scan = n
            return None
        buf.scan = 0
        line = buf.peek(i)
        buf.consume(i + 1)
        return line

    def maybe_take_batch(self, buf: RingBuffer) -> bytes | None:
        """Consume and return every complete line buffered, newlines included; ``None`` if none.

        Yields exactly the bytes that repeated :meth:`maybe_take_frame` calls
        would (each line plus ``b"\\n"``) and enforces ``max_line`` the same way.
        If an oversized line follows good ones, the good ones are returned
        first and the next call raises :class:`~reactor.errors.LineTooLong`.
        """
        limit = self.max_frame_bytes
        n = len(buf)
        if n <= limit:
            # Everything buffered fits one window: no line here can be too long, so
            # one rfind decides (the common case: one read's worth of short lines).
            i = buf.rfind(_NL, buf.scan, n)
            if i < 0:
                if n >= limit:
                    raise self._too_long(buf)
                buf.scan = n
                return None
            buf.scan = n - i - 1
            return buf.take(i + 1)
        # Each step finds the last newline within max_line bytes of the start
        # of the current line: every line before it fits, and the line after it
        # ends in the next window, so two steps cover at least max_line bytes.
        pos = 0  # start of the first line not known to be complete
        start = buf.scan  # [pos, start) is known to hold no newline
        while True:
            end = pos + limit if pos + limit < n else n
            i = buf.rfind(_NL, start, end)
            if i < 0:
                break
            pos = start = i + 1
        # Here [pos, end) holds no newline and end == min(pos + max_line, len).
        if not pos:
            if n >= limit:
                raise self._too_long(buf)
            buf.scan = n
            return None
        buf.scan = end - pos
        return buf.take(pos)

    def frames_end(self, buf, start: int, end: int) -> int:
        """The flat-buffer form of :meth:`maybe_take_batch`, for a reader that decodes in place.

        ``buf[:end]`` holds received bytes (``buf``: anything with ``rfind`` and
        ``find``, such as ``bytes``, ``bytearray`` or ``mmap``) of which
        ``buf[:start]`` is known to hold no newline (a partial line kept from
        before). Returns ``cut``, the offset just past the last complete line:
        ``buf[:cut]`` is every complete line, newlines included, and
        ``buf[cut:end]`` the start of the next; 0 if no line is complete. Consumes
        nothing and keeps no state. Raises :class:`~reactor.errors.LineTooLong`
        when a line is longer than ``max_line`` (as soon as ``max_line`` bytes of
        it are here, as :meth:`maybe_take_batch` does); the error's
        ``valid_prefix`` is where that line starts, so the good lines before it
        can be delivered first.

        One ``rfind`` per ``max_line`` bytes, none per line: the limit costs no
        Python operation per line.
        """
        limit = self.max_frame_bytes
        if end <= limit:  # the common case: one read of short lines, one rfind
            i = buf.rfind(_NL, start, end)
            if i >= 0:
                return i + 1
            if end == limit:
                raise self._too_long(buf, 0, end)
            return 0
        # As in maybe_take_batch: the last newline within max_line bytes of each line start.
        pos = 0
        s = start
        while True:
            e = pos + limit if pos + limit < end else end
            if s >= e:
                break
            i = buf.rfind(_NL, s, e)
            if i < 0:
                break
            pos = s = i + 1
        if end - pos >= limit:  # max_line bytes from pos and no newline among them
            exc = self._too_long(buf, pos, end)
            exc.valid_prefix = pos
            raise exc
        return pos

    def _too_long(self, buf, pos: int = 0, end: int | None = None) -> LineTooLong:
        # [pos, pos + max_line) holds no newline; report the whole line if it is all here.
        limit = self.max_frame_bytes
        if end is None:
            end = len(buf)
        i = buf.find(_NL, pos + limit, end)
        if i >= 0:
            return LineTooLong(i + 1 - pos, limit)
        # At least max_line + 1: the newline, when it comes, is past max_line bytes.
        return LineTooLong(max(end - pos, limit + 1), limit, complete=False)

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At EOF: consume and return the bytes of an incomplete last line, raw; ``b""`` if none.

        Call it once :meth:`maybe_take_frame` returns ``None``; it takes every byte held.
        """
        buf.scan = 0
        return buf.take(len(buf))

    def encode(self, msg) -> bytes:
        """``msg + b"\\n"``; ``ValueError`` if ``msg`` holds a newline (it would be two lines)."""
        return b"".join((_checked(msg), _NL))

    def encode_into(self, msg, out: RingBuffer) -> None:
        """Write ``msg`` then ``b"\\n"`` into ``out`` (no concatenation); checked as :meth:`encode`."""
        out.write(_checked(msg))
        out.write(_NL)


def _checked(msg) -> bytes | bytearray:
    if not isinstance(msg, (bytes, bytearray)):
        msg = bytes(msg)  # memoryview has no find and no ``in``
    if _NL in msg:
        raise ValueError(f"a line to encode must not contain b'\\n' (found at {msg.find(_NL)})")
    return msg
