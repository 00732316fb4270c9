"""RingBuffer: a FIFO byte queue stored in a chain of pooled chunks.

This module owns the byte bookkeeping of one direction of one connection;
chunks come from and go back to a :class:`~reactor.pool.BufferPool`. It never
touches sockets: it hands out views for ``recv_into`` and ``sendmsg`` instead.
"""

from __future__ import annotations

from .pool import BufferPool

__all__ = ["RingBuffer"]


class RingBuffer:
    """A FIFO byte queue over pooled chunks (a ring buffer whose ring is the pool).

    Bytes are appended at the tail chunk and consumed from the head chunk; when
    the tail chunk is full a new one is taken from the pool, and a chunk goes
    back to the pool the moment its last byte is consumed. An empty ring holds
    no chunk and no list (``_chunks is None``), so an idle connection costs
    only this small object.

    Layout: every chunk is ``pool.chunk_size`` bytes; the held bytes start at
    ``_head`` in the first chunk and end at ``_tail`` in the last one, so byte
    ``i`` of the ring lives in chunk ``(_head + i) // chunk_size``. The only
    time a chunk holds nothing is between :meth:`writable` and :meth:`commit`.

    Views returned by :meth:`writable` and :meth:`segments` point into pooled
    memory: they are valid only until the next mutating call, and must never
    be handed to application code. :meth:`peek` and :meth:`take` return copies.
    """

    __slots__ = ("_pool", "_chunks", "_head", "_tail", "_len", "scan")

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        #: Kept for the codec that decodes this ring, so the codec itself can be
        #: stateless and shared: how many bytes at the front are known to hold no
        #: frame end yet (h11 keeps its line search offset in its buffer the same
        #: way). Reset to 0 whenever the ring empties.
        self.scan = 0
        self._chunks: list[memoryview] | None = None
        self._head = 0  # offset of the first held byte in _chunks[0]
        self._tail = 0  # offset just past the last held byte in _chunks[-1]
        self._len = 0

    def __len__(self) -> int:
        """Bytes held."""
        return self._len

    @property
    def chunks_held(self) -> int:
        """Pool chunks this ring holds (0 when empty)."""
        chunks = self._chunks
        return 0 if chunks is None else len(chunks)

    # -- filling ------------------------------------------------------------

    def write(self, data) -> None:
        """Append a copy of ``data`` (any C-contiguous bytes-like object); ``b""`` is a no-op.

        New chunks come from ``pool.borrow()``, so a write never fails.
        """
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = len(mv)
        if not n:
            return
        pool = self._pool
        cs = pool.chunk_size
        chunks = self._chunks
        if chunks is None:
            chunk = pool.borrow()
            chunks = self._chunks = [chunk]
            self._head = tail = 0
        else:
            chunk = chunks[-1]
            tail = self._tail
        self._len += n
        if n <= cs - tail:
            chunk[tail:tail + n] = mv
            self._tail = tail + n
            return
        pos = 0
        while True:
            k = min(cs - tail, n - pos)
            if k:
                chunk[tail:tail + k] = mv[pos:pos + k]
                pos += k
                tail += k
            if pos == n:
                break
            chunk = pool.borrow()
            chunks.append(chunk)
            tail = 0
        self._tail = tail

    def writable(self, keep: int = 0, borrow: bool = False) -> memoryview | None:
        """A view of the free space at the tail, to ``recv_into``; ``None`` if the pool refused.

        If the tail chunk is full (or there is none) a new chunk is taken with
        ``pool.acquire(keep)``; ``None`` then means the caller should pause
        reading. With ``borrow`` the chunk comes from ``pool.borrow()`` instead
        (a heap chunk if the pool is at its cap): never ``None``. Always follow
        with :meth:`commit` (``commit(0)`` if nothing
        was read) before any other mutating call.
        """
        pool = self._pool
        chunks = self._chunks
        if chunks is not None:
            tail = self._tail
            if tail < pool.chunk_size:
                chunk = chunks[-1]
                # A fresh chunk is returned whole: its view was built once by the pool.
                return chunk[tail:] if tail else chunk
        fresh = pool.borrow() if borrow else pool.acquire(keep)
        if fresh is None:
            return None
        if chunks is None:
            self._chunks = [fresh]
            self._head = 0
        else:
            chunks.append(fresh)
        self._tail = 0
        return fresh

    def commit(self, n: int) -> None:
        """Record that ``n`` bytes were written at the start of the last :meth:`writable` view.

        ``ValueError`` unless ``0 <= n <= len(view)``. ``commit(0)`` gives back
        a chunk that :meth:`writable` took and that still holds nothing.
        """
        chunks = self._chunks
        cs = self._pool.chunk_size
        if n == 0:
            if chunks is not None and self._tail == 0:
                self._pool.release(chunks.pop())
                if chunks:
                    self._tail = cs  # writable() only adds a chunk when the last one is full
                else:
                    self._chunks = None
            return
        tail = self._tail + n
        if n < 0 or chunks is None or tail > cs:
            room = 0 if chunks is None else cs - self._tail
            raise ValueError(f"cannot commit {n} bytes: the writable view has {room}")
        self._tail = tail
        self._len += n

    # -- reading ------------------------------------------------------------

    def segments(self, max_segments: int = 64) -> list[memoryview]:
        """Views over the held bytes in order, one per chunk, at most ``max_segments``.

        ``[]`` if empty. For ``sock.sendmsg(segments)``; valid until the next mutating call.
        """
        if max_segments < 1:
            raise ValueError(f"max_segments {max_segments} must be at least 1")
        if not self._len:
            return []
        chunks: list[memoryview] = self._chunks  # type: ignore[assignment]  # held: non-empty
        cs = self._pool.chunk_size
        head, tail = self._head, self._tail
        last = len(chunks) - 1
        if tail == 0:  # an empty chunk from writable() awaiting commit()
            last -= 1
            tail = cs
        if last == 0:
            first = chunks[0]
            return [first if head == 0 and tail == cs else first[head:tail]]
        segs = [chunks[0][head:] if head else chunks[0]]
        if last < max_segments:
            segs += chunks[1:last]
            segs.append(chunks[last] if tail == cs else chunks[last][:tail])
        else:
            segs += chunks[1:max_segments]
        return segs

    def _locate(self, chunk: memoryview):
        """The object backing ``chunk`` and the chunk's offset in it (memoryview has no find())."""
        where = self._pool._where.get(id(chunk))
        if where is None:  # an overflow chunk: a view over a whole bytearray
            return chunk.obj, 0
        return where

    def _bounds(self, byte: bytes, start: int, end: int | None) -> tuple[int, int]:
        if len(byte) != 1:
            raise ValueError(f"find() takes a single byte, not {len(byte)} bytes")
        n = self._len
        if end is None or end > n:
            end = n
        if start < 0 or end < 0:
            start, end, _ = slice(start, end).indices(n)
        return start, end

    def find(self, byte: bytes, start: int = 0, end: int | None = None) -> int:
        """Index of the first ``byte`` (a bytes of length 1) in ``[start, end)``, or -1.

        Indices count from the front of the ring and follow ``bytes.find``
        (negative values count from the end). The search is C-level per chunk.
        """
        start, end = self._bounds(byte, start, end)
        if start >= end:
            return -1
        chunks: list[memoryview] = self._chunks  # type: ignore[assignment]  # held: non-empty
        head = self._head
        a, b = head + start, head + end
        if len(chunks) == 1:
            obj, base = self._locate(chunks[0])
            i = obj.find(byte, base + a, base + b)
            return i - base - head if i >= 0 else -1
        cs = self._pool.chunk_size
        k = a // cs
        while a < b:
            lo = k * cs
            obj, base = self._locate(chunks[k])
            i = obj.find(byte, base + a - lo, base + min(b - lo, cs))
            if i >= 0:
                return i - base + lo - head
            k += 1
            a = lo + cs
        return -1

    def rfind(self, byte: bytes, start: int = 0, end: int | None = None) -> int:
        """Index of the last ``byte`` in ``[start, end)``, or -1; same rules as :meth:`find`."""
        start, end = self._bounds(byte, start, end)
        if start >= end:
            return -1
        chunks: list[memoryview] = self._chunks  # type: ignore[assignment]  # held: non-empty
        head = self._head
        a, b = head + start, head + end
        if len(chunks) == 1:
            obj, base = self._locate(chunks[0])
            i = obj.rfind(byte, base + a, base + b)
            return i - base - head if i >= 0 else -1
        cs = self._pool.chunk_size
        k = (b - 1) // cs
        while b > a:
            lo = k * cs
            obj, base = self._locate(chunks[k])
            i = obj.rfind(byte, base + max(a - lo, 0), base + b - lo)
            if i >= 0:
                return i - base + lo - head
            k -= 1
            b = lo
        return -1

    def peek(self, n: int, offset: int = 0) -> bytes:
        """A copy of bytes ``[offset, offset + n)``; ``ValueError`` if that reaches past the end."""
        if n < 0 or offset < 0 or offset + n > self._len:
            raise ValueError(f"cannot peek {n} bytes at {offset}: the ring holds {self._len}")
        if not n:
            return b""
        chunks: list[memoryview] = self._chunks  # type: ignore[assignment]  # held: non-empty
        cs = self._pool.chunk_size
        a = self._head + offset
        b = a + n
        k = a // cs
        last = (b - 1) // cs
        lo = k * cs
        if k == last:
            return chunks[k][a - lo:b - lo].tobytes()
        parts = [chunks[k][a - lo:]]
        parts += chunks[k + 1:last]
        parts.append(chunks[last][:b - last * cs])
        return b"".join(parts)

    # -- draining -----------------------------------------------------------

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front; ``ValueError`` if ``n`` is negative or more than held.

        Emptied chunks go back to the pool at once; an empty ring holds none.
        """
        length = self._len
        if not 0 <= n <= length:
            raise ValueError(f"cannot consume {n} bytes: the ring holds {length}")
        if not n:
            return
        if n == length:
            self.clear()
            return
        self._len = length - n
        head = self._head + n
        cs = self._pool.chunk_size
        if head >= cs:
            k = head // cs
            chunks: list[memoryview] = self._chunks  # type: ignore[assignment]  # held: non-empty
            release = self._pool.release
            for chunk in chunks[:k]:
                release(chunk)
            del chunks[:k]
            head -= k * cs
        self._head = head

    def take(self, n: int) -> bytes:
        """``peek(n)`` then ``consume(n)``: the first ``n`` bytes, owned by the caller."""
        data = self.peek(n)
        self.consume(n)
        return data

    def clear(self) -> None:
        """Drop every byte and give every chunk back to the pool."""
        chunks = self._chunks
        if chunks is not None:
            release = self._pool.release
            for chunk in chunks:
                release(chunk)
            self._chunks = None
        self._head = self._tail = self._len = self.scan = 0
