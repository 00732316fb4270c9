"""RespCodec: RESP2, the Redis serialization protocol, sans-IO.

This module owns RESP2 framing only: it reads values out of a receive
:class:`~reactor.ring.RingBuffer` (or a flat buffer, for the batch fast path) and
encodes replies. It never touches a socket, the loop or a clock, so tests drive it
with plain rings and bytes.

The wire format, in one paragraph: every value starts with a type byte and ends with
CRLF. ``+text`` is a simple string, ``-text`` an error, ``:123`` an integer,
``$5\\r\\nhello`` a bulk string of 5 bytes (``$-1``: the null bulk), ``*2`` an array
whose 2 elements follow (``*-1``: the null array). A client sends each command as an
array of bulk strings; a person typing into telnet sends an *inline* command instead,
words on one line (``PING\\r\\n``), which servers accept too.

Two modes. ``RespCodec()`` decodes what a server receives: an array of bulk strings or
an inline command, each as a ``list`` of ``bytes`` (anything else inside an array is
refused, as redis-server does). ``RespCodec(requests=False)`` decodes anything a server
can answer, for a client: every RESP2 type, nested arrays included. Decoded values are
``bytes`` (bulk), :class:`SimpleString`, :class:`ErrorReply` (both ``bytes``
subclasses), ``int``, ``list``, and the sentinels :data:`NULL_BULK` and
:data:`NULL_ARRAY`: the decoding loses nothing, and a frame is never ``None`` (which
``maybe_take_frame`` keeps for "no frame yet").

Every size a peer chooses is capped, and the caps are exact whatever TCP's splits (a
value at a limit is accepted, one past it refused as soon as its header says so):
``max_bulk`` (redis's ``proto-max-bulk-len``, 512 MiB), ``max_elements`` per array,
``max_depth`` of nested arrays, ``max_inline`` for any line (redis's 64 KiB inline
limit) and ``max_frame_bytes`` for a whole frame (redis's ``client-query-buffer-limit``,
1 GiB). Bad bytes raise :class:`RespProtocolError` (a cap: :class:`RespTooLarge`, also a
``FrameTooLong``) with a one-line message, so a server can answer
``-ERR Protocol error: <message>`` and close, as redis-server does.

Incremental: a frame split at any byte parses the same. A ``RespCodec`` keeps its parse
state between calls (the arrays built so far, where the next element starts, how many
bytes must be buffered before trying again), so a large bulk arriving in many reads is
not rescanned, and its payload is copied out of the ring once. Hence one codec per
connection (the codec factory given to ``Loop.listen`` may be the class itself), and, as
for ``LineCodec``, between calls the receive ring may only be appended to.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import repeat
from typing import Any, Iterable

from reactor.errors import CodecError, FrameTooLong
from reactor.ring import RingBuffer

__all__ = [
    "DEFAULT_MAX_BULK", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_ELEMENTS", "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_INLINE", "NULL_ARRAY", "NULL_BULK", "ErrorReply", "Null", "RespCodec",
    "RespProtocolError", "RespTooLarge", "SimpleString", "array", "bulk", "encode", "error",
    "integer", "simple",
]

DEFAULT_MAX_BULK = 512 * 1024 * 1024  #: redis's proto-max-bulk-len
DEFAULT_MAX_ELEMENTS = 1024 * 1024  #: elements of one array
DEFAULT_MAX_DEPTH = 32  #: arrays nested in arrays (replies only: requests are flat)
DEFAULT_MAX_INLINE = 64 * 1024  #: redis's PROTO_INLINE_MAX_SIZE, for any line
DEFAULT_MAX_FRAME = 1024 * 1024 * 1024  #: redis's client-query-buffer-limit

CRLF = b"\r\n"
_CR, _LF = 13, 10
#: A length line (``*N`` / ``$N``) longer than this, CRLF included, cannot be valid: a sign
#: and 19 digits hold any 64-bit length.
_LENGTH_LINE = 24
#: How much of a ring the per-frame path copies out at a time. A bulk whose payload ends
#: beyond it is copied straight from the ring, once.
_WINDOW = 64 * 1024
#: The fast path's tables stop here: longer bulks and arrays take the general parser.
_FAST_LIMIT = 1024
#: The fast path checks runs of same-shape commands at most this many at a time, so that
#: bytes whose shapes keep changing cost it linear time, not quadratic.
_RUN = 32
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  #: RESP2 integers are signed 64-bit


class SimpleString(bytes):
    """A RESP simple string (``+OK``): decoded from ``+``, encoded as ``+``. No CR or LF."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SimpleString({bytes(self)!r})"


class ErrorReply(bytes):
    """A RESP error reply (``-ERR message``): a value a client receives, never raised."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ErrorReply({bytes(self)!r})"


class Null:
    """RESP2's two nulls, :data:`NULL_BULK` (``$-1``) and :data:`NULL_ARRAY` (``*-1``).

    Sentinels rather than ``None`` so that decoding loses nothing and a decoded frame is
    never ``None``. Both are falsy; compare with ``is``.
    """

    __slots__ = ("wire", "name")

    def __init__(self, wire: bytes, name: str) -> None:
        self.wire = wire
        self.name = name

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.name


NULL_BULK = Null(b"$-1\r\n", "NULL_BULK")
NULL_ARRAY = Null(b"*-1\r\n", "NULL_ARRAY")


class RespProtocolError(CodecError):
    """Bytes that are not RESP2 (or not a request, in request mode). The message is one
    line, in redis's words where it has them; a server answers
    ``-ERR Protocol error: <message>`` and closes."""


class RespTooLarge(FrameTooLong, RespProtocolError):
    """A size the peer declared (or sent) is over a cap. ``what`` names the cap;
    ``size`` is the size as far as known (a lower bound for a line or a frame still
    arriving), ``limit`` the cap.

    The message is the same however the bytes were split: a declared size (``bulk
    length``, ``array length``, ``nesting depth``) is quoted, a measured one (``line``,
    ``inline request``, ``frame``) is not, since how much of it had arrived when it
    passed the cap depends on the split.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        if what in ("line", "inline request", "frame"):
            message = f"{what} longer than the limit of {limit} bytes"
        else:
            message = f"{what} of {size} exceeds the limit {limit}"
        FrameTooLong.__init__(self, size, limit, message)


# -- parse results (the parser returns (kind, a, b) rather than raising for "not yet") --

_DONE = 0  # a: the frame, b: the index just past it
_SKIP = 1  # nothing to deliver (an empty inline line; *0 or *-1 as a request); b: past it
_LINE = 2  # an incomplete line starts at b (the elements before it are in the stack)
_BULK = 3  # a bulk's header is parsed; its payload of a bytes, from b, is not all here
_NOTHING = object()  # "no frame" inside the codec (a frame may be falsy, never this)


def _show(data: bytes, limit: int = 24) -> str:
    """A one-line quotation of peer bytes for an error message: ``'a\\r'`` (a bytes repr
    without its ``b``: control bytes escaped)."""
    return repr(bytes(data[:limit]))[1:] + ("..." if len(data) > limit else "")


@lru_cache(maxsize=16)
def _fast_tables(max_bulk: int, max_elements: int) -> tuple[list[bytes], dict[bytes, int]]:
    """The fast path's tables, within the caps: the canonical header of each bulk length
    (``[b"$0", b"$1", ...]``) and the length of each canonical array header
    (``{b"*1": 1, ...}``). A header found in them needs no int() and no validation."""
    heads = [b"$%d" % n for n in range(min(_FAST_LIMIT, max_bulk) + 1)]
    arrays = {b"*%d" % n: n for n in range(1, min(_FAST_LIMIT, max_elements) + 1)}
    return heads, arrays


_SPACES = b" \t\r\n\x0b\x0c"
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"


def _split_inline(line: bytes) -> list[bytes]:
    """An inline command's words. As redis-server: split on whitespace; ``"..."`` quotes
    with backslash escapes (``\\n``, ``\\xHH``...) and ``'...'`` quotes (only ``\\'``) may
    hold spaces, and a closing quote must end its word."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    words: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            if quote == 0x22:  # "
                if c == 0x5C and i + 3 < n and line[i + 1] == 0x78 \
                        and line[i + 2] in _HEX and line[i + 3] in _HEX:  # \xHH
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                if c == 0x5C and i + 1 < n:
                    word.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == 0x22:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        raise RespProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                word.append(c)
            elif quote == 0x27:  # '
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    word.append(0x27)
                    i += 2
                    continue
                if c == 0x27:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        raise RespProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                word.append(c)
            elif c in _SPACES:
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                word.append(c)
            i += 1
        if quote:
            raise RespProtocolError("unbalanced quotes in request")
        words.append(bytes(word))


def _length(data: bytes, a: int, b: int, what: str) -> int:
    """The length in ``data[a:b]``: ``0``, ``-1`` or digits without a leading zero (as
    redis's string2ll); anything else (``+5``, ``05``, `` 5``, ``-5``) is refused."""
    s = data[a:b]
    if s.isdigit() and (s[0] != 0x30 or len(s) == 1):
        return int(s)
    if s == b"-1":
        return -1
    raise RespProtocolError(f"invalid {what} length {_show(s)}")


class RespCodec:
    """RESP2 frames; see the module docstring. One instance per connection.

    ``requests`` (default): decode requests, as a server does; else decode any RESP2
    value, as a client does. The caps are keyword arguments (``max_bulk``,
    ``max_elements``, ``max_depth``, ``max_inline``, ``max_frame_bytes``); each must be
    at least 1 (``ValueError``).

    Offers the per-frame path (``maybe_take_frame``) and both batch capabilities
    (``maybe_take_batch``, ``frames_end``), so a handler with ``on_batch`` gets every
    complete frame of a read in one call: :meth:`frames_of` turns those wire bytes back
    into frames, reusing the parse ``frames_end`` just made of them.
    """

    __slots__ = ("max_bulk", "max_elements", "max_depth", "max_inline", "max_frame_bytes",
                 "requests", "_fast", "_heads", "_arrays",
                 "_front", "_pos", "_need", "_bulk", "_stack", "_snap", "_snap_at")

    def __init__(self, *, requests: bool = True, max_bulk: int = DEFAULT_MAX_BULK,
                 max_elements: int = DEFAULT_MAX_ELEMENTS, max_depth: int = DEFAULT_MAX_DEPTH,
                 max_inline: int = DEFAULT_MAX_INLINE,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME) -> None:
        for name, value in (("max_bulk", max_bulk), ("max_elements", max_elements),
                            ("max_depth", max_depth), ("max_inline", max_inline),
                            ("max_frame_bytes", max_frame_bytes)):
            if value < 1:
                raise ValueError(f"{name} {value} must be at least 1")
        self.max_bulk = max_bulk
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.max_inline = max_inline
        self.max_frame_bytes = max_frame_bytes
        self.requests = requests
        self._heads, self._arrays = _fast_tables(max_bulk, max_elements)
        # The token fast path (_scan) checks no frame size: it may run only where no frame it
        # accepts (at most _FAST_LIMIT elements of _FAST_LIMIT bytes) can pass the frame cap.
        b, e = len(self._heads) - 1, len(self._arrays)  # the largest bulk and array in them
        largest = len(b"*%d\r\n" % e) + e * (len(b"$%d\r\n" % b) + b + 2)
        self._fast = requests and max_frame_bytes >= max(largest, max_inline + 2)
        self._reset()

    def _reset(self) -> None:
        # The ring path's state, in offsets from the ring's first byte: _front, where the
        # frame being parsed begins; _pos, its first byte not parsed yet; _need, the length
        # the ring must reach before parsing can progress; _bulk, the length of a bulk whose
        # header is parsed and whose payload (at _pos) is awaited, or -1; _stack, the arrays
        # being filled ([items, still to come]); _snap, a copy of the ring from _snap_at.
        self._front = self._pos = self._need = 0
        self._bulk = -1
        self._stack: list[list[Any]] = []
        self._snap = b""
        self._snap_at = 0

    # -- the parser --------------------------------------------------------------------

    def _parse(self, data: bytes, i: int, end: int, stack: list[list[Any]],
               start: int) -> tuple[int, Any, int]:
        """Parse from ``data[i:end]`` until a frame completes or the bytes run out.

        ``stack`` holds the arrays of the frame begun at ``start`` (an index into
        ``data``, negative if it began before it) that are still being filled; elements
        completed here are appended to them, so a later call resumes where this one
        stopped. Returns ``(kind, a, b)`` (``_DONE``, ``_SKIP``, ``_LINE``, ``_BULK``
        above); raises :class:`RespProtocolError` on bad bytes or a cap.
        """
        requests = self.requests
        max_frame = self.max_frame_bytes
        while True:
            if i >= end:
                return self._incomplete(i, end, start)
            t = data[i]
            if requests and t != (0x24 if stack else 0x2A):
                # As redis-server: a request is an array of bulk strings ("*" then "$"s), or
                # an inline command (anything not starting with "*").
                if stack:
                    raise RespProtocolError(f"expected '$', got {_show(data[i:i + 1])}")
                return self._inline(data, i, end, start)
            if t == 0x24 or t == 0x2A:  # $ or *
                j = data.find(CRLF, i + 1, min(end, i + _LENGTH_LINE))
                if j < 0:
                    if end - i >= _LENGTH_LINE:
                        what = "bulk" if t == 0x24 else "multibulk"
                        shown = _show(data[i + 1:i + _LENGTH_LINE])  # the same however split
                        raise RespProtocolError(f"invalid {what} length {shown}...")
                    return self._incomplete(i, end, start)
                if j + 2 - start > max_frame:
                    raise RespTooLarge("frame", j + 2 - start, max_frame)
                if t == 0x24:
                    size = _length(data, i + 1, j, "bulk")
                    if size < 0:
                        if requests:
                            raise RespProtocolError("invalid bulk length '-1'")
                        value: Any = NULL_BULK
                        i = j + 2
                    else:
                        if size > self.max_bulk:
                            raise RespTooLarge("bulk length", size, self.max_bulk)
                        s = j + 2
                        e = s + size
                        if e + 2 - start > max_frame:
                            raise RespTooLarge("frame", e + 2 - start, max_frame)
                        if e + 2 > end:
                            return _BULK, size, s
                        if data[e] != _CR or data[e + 1] != _LF:
                            raise RespProtocolError(
                                f"expected CRLF after a bulk string of {size} bytes, "
                                f"got {_show(data[e:e + 2])}")
                        value = data[s:e]
                        i = e + 2
                else:
                    size = _length(data, i + 1, j, "multibulk")
                    i = j + 2
                    if size > 0:
                        if size > self.max_elements:
                            raise RespTooLarge("array length", size, self.max_elements)
                        if len(stack) >= self.max_depth:
                            raise RespTooLarge("nesting depth", len(stack) + 1, self.max_depth)
                        stack.append([[], size])
                        continue
                    if requests:  # as redis-server: an empty or null request is no command
                        return _SKIP, None, i
                    value = [] if size == 0 else NULL_ARRAY
            elif t == 0x2B or t == 0x2D or t == 0x3A:  # + - :
                limit = self.max_inline
                j = data.find(CRLF, i + 1, min(end, i + limit + 3))
                if j < 0:
                    if end - i >= limit + 3:  # no CRLF where a line of max_inline could end
                        raise RespTooLarge("line", end - i - 1, limit)
                    return self._incomplete(i, end, start)
                if j + 2 - start > max_frame:
                    raise RespTooLarge("frame", j + 2 - start, max_frame)
                text = data[i + 1:j]
                if t == 0x3A:
                    digits = text[1:] if text[:1] == b"-" else text
                    if not digits.isdigit() or len(digits) > 19 \
                            or not _INT64_MIN <= (value := int(text)) <= _INT64_MAX:
                        raise RespProtocolError(f"invalid integer {_show(text)}")
                elif b"\r" in text or b"\n" in text:
                    raise RespProtocolError(f"CR or LF inside a line: {_show(text)}")
                else:
                    value = SimpleString(text) if t == 0x2B else ErrorReply(text)
                i = j + 2
            else:
                raise RespProtocolError(f"invalid type byte {_show(data[i:i + 1])}")
            # A value is complete: it ends the frame or fills its array (and perhaps more).
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                stack.pop()
                value = top[0]
            else:
                return _DONE, value, i

    def _incomplete(self, i: int, end: int, start: int) -> tuple[int, Any, int]:
        """The bytes ran out in a line starting at ``i``: ``_LINE``, unless the frame is
        already known to be over its cap (it holds at least one byte more)."""
        if end + 1 - start > self.max_frame_bytes:
            raise RespTooLarge("frame", end + 1 - start, self.max_frame_bytes)
        return _LINE, None, i

    def _inline(self, data: bytes, i: int, end: int, start: int) -> tuple[int, Any, int]:
        """An inline command at ``data[i]``: a line ended by LF or CRLF, at most
        ``max_inline`` bytes without its ending."""
        limit = self.max_inline
        j = data.find(b"\n", i, min(end, i + limit + 2))
        if j < 0:
            held = end - i
            if held > limit + 1 or (held == limit + 1 and data[end - 1] != _CR):
                raise RespTooLarge("inline request", held, limit)
            return self._incomplete(i, end, start)
        stop = j - 1 if j > i and data[j - 1] == _CR else j
        if stop - i > limit:
            raise RespTooLarge("inline request", stop - i, limit)
        if j + 1 - start > self.max_frame_bytes:
            raise RespTooLarge("frame", j + 1 - start, self.max_frame_bytes)
        words = _split_inline(data[i:stop])
        return (_DONE, words, j + 1) if words else (_SKIP, None, j + 1)

    # -- flat buffers: the batch fast path ----------------------------------------------

    def _scan(self, data: bytes) -> tuple[list[Any], int, RespProtocolError | None]:
        """Every complete frame at the start of ``data``: ``(frames, cut, error)``, where
        ``data[:cut]`` holds them and ``error`` (or None) is what the bytes at ``cut``
        raised. Stateless.

        Requests go through :meth:`_fast_scan` first; whatever it does not vouch for is
        left to :meth:`_parse`, from that frame on.
        """
        frames: list[Any] = []
        cut = 0
        if self._fast:
            toks = data.split(CRLF)
            t = self._fast_scan(toks, frames)
            if t:  # the bytes of the tokens taken, each with its CRLF (usually all but a few)
                cut = len(data) - sum(map(len, toks[t:])) - 2 * (len(toks) - 1 - t)
        end = len(data)
        stack: list[list[Any]] = []
        try:
            while cut < end:
                kind, value, i = self._parse(data, cut, end, stack, cut)
                if kind == _DONE:
                    frames.append(value)
                elif kind != _SKIP:
                    break
                cut = i
        except RespProtocolError as exc:
            return frames, cut, exc
        return frames, cut, None

    def _fast_scan(self, toks: list[bytes], frames: list[Any]) -> int:
        """The requests in ``toks`` (the bytes split on CRLF) that need no :meth:`_parse`:
        appends them to ``frames``; returns how many tokens they took.

        Why it is sound: if a bulk's token (what lies between the CRLF after its header
        and the next CRLF) is as long as its header says, it is exactly that bulk with its
        CRLF after it. Headers are looked up in tables of canonical ``$N`` / ``*N`` within
        the caps, so anything longer, malformed or holding CRLF stops the fast path there.

        Why it is fast: pipelined clients send runs of commands of one shape (16 SETs of
        three words). A run of ``k`` frames of ``n`` words is checked and cut with a
        fixed number of C-level calls per word position (strided slices of the tokens,
        ``map(len)``, a zip), not per frame: the Python-level work is per run (of at most
        ``_RUN`` frames). The same inline line repeated (``PING``) is one run too.
        """
        arrays = self._arrays
        heads_of = self._heads.__getitem__  # a bulk's length -> its canonical header
        last = len(toks) - 1  # toks[last] is not followed by CRLF: never complete
        t = 0
        try:
            while t < last:
                tok = toks[t]
                n = arrays.get(tok)
                if n is None:
                    if tok[:1] == b"*" or b"\n" in tok or b'"' in tok or b"'" in tok \
                            or len(tok) > self.max_inline:
                        break
                    words = tok.split()  # an inline command (or an empty line: no command)
                    k = 1
                    if t + 1 < last and toks[t + 1] == tok:  # the same line again (PING...)
                        same = toks[t:min(last, t + _RUN)]
                        k = same.count(tok)
                        if k != len(same):
                            k = list(map(tok.__eq__, same)).index(False)
                    if words:
                        frames += map(list, repeat(words, k))
                    t += k
                    continue
                stride = 2 * n + 1
                end = t + stride
                if end > last:
                    break
                if end < last and toks[end] == tok and n <= 8:  # a run of this shape
                    k = min((last - t) // stride, _RUN)
                    firsts = toks[t:t + k * stride:stride]
                    if firsts.count(tok) != k:  # the run ends where another shape begins
                        k = list(map(tok.__eq__, firsts)).index(False)
                    end = t + k * stride
                    cols = []
                    for c in range(1, stride, 2):  # each word position: its headers, its bulks
                        heads = toks[t + c:end:stride]
                        col = toks[t + c + 1:end:stride]
                        head = heads[0]
                        if heads.count(head) == k:  # one length for all (a command name...)
                            size = len(col[0])
                            if heads_of(size) != head or (col.count(col[0]) != k
                                                          and list(map(len, col)) != [size] * k):
                                return t
                        elif heads != list(map(heads_of, map(len, col))):
                            return t
                        cols.append(col)
                    frames += map(list, zip(*cols))
                else:
                    frame = toks[t + 2:end:2]
                    if toks[t + 1:end:2] != list(map(heads_of, map(len, frame))):
                        return t
                    frames.append(frame)
                t = end
        except IndexError:  # a bulk longer than the tables: _parse takes it from this frame
            pass
        return t

    def frames_end(self, buf: Any, start: int, end: int) -> int:
        """Where the complete frames in ``buf[:end]`` end (0: none); the flat-buffer form of
        :meth:`maybe_take_batch`. Consumes nothing (``start`` is not needed: a partial frame
        kept in front is short, so it is simply parsed again).

        Raises :class:`RespProtocolError` for bad bytes after the good frames, with
        ``valid_prefix`` set to where the good frames end. The parse is kept for
        :meth:`frames_of` (the next call asks it for exactly these bytes).
        """
        data = bytes(memoryview(buf)[:end])
        frames, cut, exc = self._scan(data)
        if cut:
            _memo[:] = (self.requests, data if cut == end else data[:cut], frames)
        if exc is not None:
            exc.valid_prefix = cut
            raise exc
        return cut

    def frames_of(self, data: bytes) -> list[Any]:
        """The frames in ``data``, wire bytes of complete frames (as ``on_batch`` receives
        them from :meth:`frames_end` or :meth:`maybe_take_batch`). Reuses the parse that
        ``frames_end`` made if ``data`` is the same bytes, else parses them.
        ``RespProtocolError`` if ``data`` is not complete, valid frames."""
        requests, seen, frames = _memo
        if seen is not None and requests == self.requests and seen == data:
            _memo[:] = (False, None, None)
            return frames
        frames, cut, exc = self._scan(data)
        if exc is not None:
            raise exc
        if cut != len(data):
            raise RespProtocolError(f"an incomplete frame of {len(data) - cut} bytes")
        return frames

    # -- rings: the per-frame path -------------------------------------------------------

    def _next(self, buf: RingBuffer) -> Any:
        """Parse the frame at ``_front`` (resuming), without consuming. Returns it (and
        moves ``_front`` past it) or ``_NOTHING``. After bad bytes the frame's partial
        parse is dropped, so asking again raises the same error again."""
        try:
            return self._resume(buf)
        except RespProtocolError:
            self._pos = self._front
            self._stack = []
            self._bulk = -1
            self._need = 0
            raise

    def _resume(self, buf: RingBuffer) -> Any:
        n = len(buf)
        while n >= self._need:
            if self._bulk >= 0:  # a payload beyond the window, now all here: copy it once
                size, s = self._bulk, self._pos
                if buf.peek(2, s + size) != CRLF:
                    got = _show(buf.peek(2, s + size))
                    raise RespProtocolError(
                        f"expected CRLF after a bulk string of {size} bytes, got {got}")
                value: Any = buf.peek(size, s)
                self._bulk = -1
                self._pos = s + size + 2
                stack = self._stack
                while stack:
                    top = stack[-1]
                    top[0].append(value)
                    top[1] -= 1
                    if top[1]:
                        break
                    stack.pop()
                    value = top[0]
                else:
                    self._front = self._pos
                    return value
                continue
            pos = self._pos
            snap, at = self._snap, self._snap_at
            if not at <= pos < at + len(snap):  # no copy of these bytes yet: take a window
                snap = self._snap = buf.peek(min(n - pos, max(_WINDOW, self.max_inline + 3)), pos)
                at = self._snap_at = pos
            kind, value, i = self._parse(snap, pos - at, len(snap), self._stack, self._front - at)
            if kind == _DONE or kind == _SKIP:
                self._front = self._pos = at + i
                if kind == _DONE:
                    return value
            elif kind == _BULK:
                self._pos = at + i
                self._bulk = value
                self._need = at + i + value + 2
            else:  # _LINE: resume at that line, from a fresh window of what the ring holds
                self._pos = at + i
                self._snap = b""
                self._snap_at = 0
                if at + len(snap) >= n:
                    self._need = n + 1
                    return _NOTHING
        return _NOTHING

    def _consumed(self, buf: RingBuffer, k: int) -> None:
        """Consume ``k`` bytes (complete frames) and shift the offsets kept."""
        buf.consume(k)
        self._front -= k
        self._pos -= k
        self._need = max(0, self._need - k)
        self._snap_at -= k

    def maybe_take_frame(self, buf: RingBuffer) -> Any:
        """Consume and return the next complete frame; ``None`` if there is none yet.

        A request is a ``list`` of ``bytes``; in client mode any decoded value. Raises
        :class:`RespProtocolError` (:class:`RespTooLarge` for a cap) on bad bytes, as
        soon as they arrive.
        """
        frame = self._next(buf)
        if self._front:
            self._consumed(buf, self._front)
        return None if frame is _NOTHING else frame

    def maybe_take_batch(self, buf: RingBuffer) -> bytes | None:
        """Consume and return every complete frame buffered, in wire form; ``None`` if none.

        The same frames and errors as repeated :meth:`maybe_take_frame`; if bad bytes
        follow good frames, the good ones are returned first and the next call raises.
        """
        try:
            while self._next(buf) is not _NOTHING:
                pass
        except RespProtocolError:
            if not self._front:
                raise
        k = self._front
        if not k:
            return None
        data = buf.peek(k)
        self._consumed(buf, k)
        return data

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At EOF: consume and return the bytes of an incomplete frame; ``b""`` if none.
        The codec starts afresh (with a new ring, say)."""
        self._reset()
        return buf.take(len(buf))

    # -- encoding ------------------------------------------------------------------------

    def encode(self, msg: Any) -> bytes:
        """The wire bytes of ``msg`` (see :func:`encode`)."""
        return encode(msg)

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        """Write the wire bytes of ``msg`` into ``out``. A large bulk is written as it is,
        not joined into a copy first."""
        if type(msg) is bytes and len(msg) > _WINDOW:
            out.write(b"$%d\r\n" % len(msg))
            out.write(msg)
            out.write(CRLF)
        else:
            out.write(encode(msg))


#: frames_end's last parse, for frames_of: [requests mode, the wire bytes, their frames].
#: One loop runs one connection at a time, and on_batch follows frames_end at once.
_memo: list[Any] = [False, None, None]


# -- encoding helpers: each returns the wire bytes of one value ------------------------------


def simple(text: bytes | str) -> bytes:
    """``+text\\r\\n``; ``ValueError`` if ``text`` holds CR or LF."""
    return b"+%s\r\n" % _line(text)


def error(text: bytes | str) -> bytes:
    """``-text\\r\\n`` (by convention ``text`` starts with a code: ``ERR``, ``WRONGTYPE``...);
    ``ValueError`` if ``text`` holds CR or LF."""
    return b"-%s\r\n" % _line(text)


def integer(n: int) -> bytes:
    """``:n\\r\\n``."""
    return b":%d\r\n" % n


def bulk(data: bytes | bytearray | memoryview | str | None) -> bytes:
    """``$len\\r\\ndata\\r\\n``; ``None`` gives the null bulk ``$-1\\r\\n``; ``str`` is UTF-8."""
    if data is None:
        return b"$-1\r\n"
    if isinstance(data, str):
        data = data.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array(items: Iterable[Any] | None) -> bytes:
    """``*n\\r\\n`` and each item encoded (:func:`encode`); ``None`` gives ``*-1\\r\\n``."""
    if items is None:
        return b"*-1\r\n"
    parts: list[bytes] = [b""]
    count = 0
    for item in items:
        _encode(item, parts)
        count += 1
    parts[0] = b"*%d\r\n" % count
    return b"".join(parts)


def encode(value: Any) -> bytes:
    """The wire bytes of any value :class:`RespCodec` decodes, and a few conveniences:
    ``bytes`` (and ``bytearray``, ``memoryview``, ``str`` as UTF-8) a bulk string;
    :class:`SimpleString`, :class:`ErrorReply`; ``int`` (``bool`` as 0 or 1); ``list``
    or ``tuple`` an array; ``None`` or :data:`NULL_BULK` the null bulk,
    :data:`NULL_ARRAY` the null array. ``TypeError`` for anything else."""
    parts: list[bytes] = []
    _encode(value, parts)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _encode(value: Any, parts: list[bytes]) -> None:
    t = type(value)
    if t is bytes:
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif t is list or t is tuple:
        parts.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, parts)
    elif t is int or t is bool:
        parts.append(b":%d\r\n" % value)
    elif t is SimpleString:
        parts.append(b"+%s\r\n" % _line(value))
    elif t is ErrorReply:
        parts.append(b"-%s\r\n" % _line(value))
    elif value is None:
        parts.append(b"$-1\r\n")
    elif isinstance(value, Null):
        parts.append(value.wire)
    elif isinstance(value, (bytes, bytearray, memoryview, str)):
        parts.append(bulk(value if isinstance(value, (bytes, str)) else bytes(value)))
    elif isinstance(value, int):
        parts.append(b":%d\r\n" % value)
    else:
        raise TypeError(f"cannot encode {t.__name__} as RESP2")


def _line(text: bytes | str) -> bytes:
    if isinstance(text, str):
        text = text.encode()
    if b"\r" in text or b"\n" in text:
        raise ValueError(f"a simple string or error must not hold CR or LF: {_show(text)}")
    return bytes(text)
