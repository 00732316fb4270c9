"""BufferPool: fixed chunks lent out O(1) from mmap arenas that grow up to a cap and shrink back.

This module owns the arenas and the free list, nothing else: it knows no
sockets, rings or connections. Rings (``reactor/ring.py``) borrow chunks here
and give them back the moment they are empty, so idle connections hold none.

Elastic, bounded: the pool starts with one arena of ``chunks`` chunks. When the
free list is empty it maps another arena of ``grow_chunks`` (``grows_total``),
up to ``max_chunks`` in all; :meth:`trim` (the loop calls it about once a
second while the pool is grown) unmaps grown arenas whose every chunk is free
again (``shrinks_total``), keeping one arena's worth of headroom so a steady
load does not map and unmap in turn. Anonymous private mappings cost RSS only
for pages that were written, so a large cap costs nothing until it is used.
"""

from __future__ import annotations

import dataclasses
import mmap
from typing import Callable

__all__ = ["BufferPool", "PoolStats", "fair_share", "MIN_SHARE"]

#: The smallest fair share of buffer memory (a read asks at least this much, and a send
#: backlog may reach it before reading pauses), however many connections share the pool.
MIN_SHARE = 4096


def fair_share(max_bytes: int, conns: int, read_budget: int) -> int:
    """Bytes of buffer memory one of ``conns`` connections may hold: ``max_bytes`` (the
    pool's cap) over twice the connections, at least ``MIN_SHARE``, at most ``read_budget``
    (the loop passes its read size, what one recv asks for).

    Twice, because a connection's send backlog may pass its share by one read's reply
    before reading pauses: a read asks at most one share, and reading stops once the
    backlog is over one share. So every connection holds at most two shares, and all of
    them together at most ``max(max_bytes, 2 * MIN_SHARE * conns)``.
    """
    share = max_bytes // (2 * (conns if conns > 0 else 1))
    if share < MIN_SHARE:
        return MIN_SHARE
    return share if share < read_budget else max(read_budget, MIN_SHARE)


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a :class:`BufferPool`; gauges are current, ``*_total`` are counters."""

    chunk_size: int
    chunks_total: int       #: arena chunks mapped now (the capacity; grows and shrinks)
    chunks_in_use: int      #: arena chunks lent out
    chunks_free: int
    high_water: int         #: the most arena chunks ever lent out at once
    exhausted_total: int    #: acquire() calls refused because too few chunks were free
    overflow_in_use: int    #: heap chunks lent by borrow() while the arena was empty
    overflow_total: int
    chunks_max: int         #: the cap the capacity may grow to
    grows_total: int        #: arenas mapped after the first
    shrinks_total: int      #: grown arenas unmapped again by trim()


class BufferPool:
    """Fixed-size chunks from anonymous ``mmap`` arenas.

    Every chunk is a writable ``memoryview`` of exactly ``chunk_size`` bytes,
    built once when its arena is mapped. The free list is a stack, so the chunk
    released last is lent next while its pages are still hot.

    ``chunks``: the first arena, mapped now and never unmapped. ``max_chunks``
    (default ``chunks``: a fixed pool): the most chunks all arenas may hold.
    ``grow_chunks`` (default ``chunks``, at most what is left under the cap):
    the size of each further arena.

    Callers must give back exactly the views they received, once each; the
    pool does not check for double release (that would cost a lookup per call).
    """

    __slots__ = (
        "chunk_size",
        "chunks_total",
        "chunks_max",
        "grow_chunks",
        "_arenas",
        "_free",
        "_where",
        "_high_water",
        "_exhausted_total",
        "_overflow_in_use",
        "_overflow_total",
        "_grows_total",
        "_shrinks_total",
        "on_grow",
    )

    def __init__(self, chunk_size: int = 16384, chunks: int = 4096,
                 max_chunks: int | None = None, grow_chunks: int | None = None) -> None:
        """Map the first arena of ``chunk_size * chunks`` bytes.

        ``ValueError`` if ``chunk_size < 64``, ``chunks < 1``, ``max_chunks < chunks``
        or ``grow_chunks < 1``.
        """
        if chunk_size < 64:
            raise ValueError(f"chunk_size {chunk_size} is below the minimum of 64")
        if chunks < 1:
            raise ValueError(f"chunks {chunks} must be at least 1")
        if max_chunks is None:
            max_chunks = chunks
        if max_chunks < chunks:
            raise ValueError(f"max_chunks {max_chunks} is below chunks {chunks}")
        if grow_chunks is None:
            grow_chunks = chunks
        if grow_chunks < 1:
            raise ValueError(f"grow_chunks {grow_chunks} must be at least 1")
        self.chunk_size = chunk_size
        self.chunks_max = max_chunks
        self.grow_chunks = grow_chunks
        self.chunks_total = 0
        # One entry per mapped arena: [mmap, its views (all of them, in offset order)].
        self._arenas: list[list] = []
        self._free: list[memoryview] = []  # never rebound: Loop keeps a reference for a cheap len()
        # id(view) -> (the arena's mmap, the chunk's offset in it): a memoryview has no
        # find(), so rings search the arena itself (mmap.find is C-level) at this offset.
        self._where: dict[int, tuple[mmap.mmap, int]] = {}
        self._high_water = 0
        self._exhausted_total = 0
        self._overflow_in_use = 0
        self._overflow_total = 0
        self._grows_total = 0
        self._shrinks_total = 0
        #: Called with no arguments after each arena the pool maps beyond its first (the loop
        #: arms its trim timer then: no check per iteration). None: nobody is told.
        self.on_grow: Callable[[], None] | None = None
        self._map(chunks)

    def _map(self, n: int) -> None:
        size = self.chunk_size
        arena = mmap.mmap(-1, size * n, flags=mmap.MAP_PRIVATE)
        whole = memoryview(arena)
        views = [whole[i * size:(i + 1) * size] for i in range(n)]
        whole.release()
        where = self._where
        for i, v in enumerate(views):
            where[id(v)] = (arena, i * size)
        self._arenas.append([arena, views])
        # Reversed so the next acquire() gets the chunk at the arena's offset 0: an
        # arena is then touched from its start, which keeps RSS compact.
        self._free.extend(reversed(views))
        self.chunks_total += n

    def _grow(self) -> bool:
        """Map one more arena if the cap allows; True if chunks were added."""
        room = self.chunks_max - self.chunks_total
        if room <= 0:
            return False
        self._map(min(self.grow_chunks, room))
        self._grows_total += 1
        if self.on_grow is not None:
            self.on_grow()
        return True

    @property
    def chunks_free(self) -> int:
        """Arena chunks ready to be lent."""
        return len(self._free)

    @property
    def chunks_in_use(self) -> int:
        """Arena chunks lent out (overflow chunks are not counted here)."""
        return self.chunks_total - len(self._free)

    @property
    def max_bytes(self) -> int:
        """The cap, in bytes: ``chunks_max * chunk_size``."""
        return self.chunks_max * self.chunk_size

    def is_low(self, keep: int = 0) -> bool:
        """True if :meth:`acquire` with this ``keep`` would refuse now: no more than
        ``keep`` chunks free and the cap reached. Takes nothing and counts nothing."""
        return len(self._free) <= keep and self.chunks_total >= self.chunks_max

    def acquire(self, keep: int = 0) -> memoryview | None:
        """Lend an arena chunk if more than ``keep`` chunks are free (growing the pool
        first if the cap allows), else return ``None``.

        For the receive side: a ``None`` means "stop reading", and is counted in
        ``exhausted_total``. ``keep`` (>= 0) reserves chunks for other users.
        """
        if keep < 0:
            raise ValueError(f"keep {keep} must not be negative")
        free = self._free
        if len(free) <= keep:
            while len(free) <= keep:
                if not self._grow():
                    self._exhausted_total += 1
                    return None
        chunk = free.pop()
        in_use = self.chunks_total - len(free)
        if in_use > self._high_water:
            self._high_water = in_use
        return chunk

    def borrow(self) -> memoryview:
        """Lend an arena chunk (growing the pool if it is empty and the cap allows), or a
        heap-allocated chunk of the same size if the cap is reached.

        For the send side: a write never fails for want of a chunk. Heap chunks
        are counted in ``overflow_in_use``/``overflow_total``. Never ``None``.
        """
        free = self._free
        if free or self._grow():
            chunk = free.pop()
            in_use = self.chunks_total - len(free)
            if in_use > self._high_water:
                self._high_water = in_use
            return chunk
        self._overflow_in_use += 1
        self._overflow_total += 1
        return memoryview(bytearray(self.chunk_size))

    def release(self, chunk: memoryview) -> None:
        """Take back a chunk lent by :meth:`acquire` or :meth:`borrow`; it may be reused at once."""
        if type(chunk.obj) is mmap.mmap:
            self._free.append(chunk)
        else:
            self._overflow_in_use -= 1

    @property
    def grown(self) -> bool:
        """True while arenas beyond the first are mapped (:meth:`trim` may give them back)."""
        return len(self._arenas) > 1

    def trim(self) -> int:
        """Unmap grown arenas whose chunks are all free, newest first, while one arena's
        worth of free chunks (``grow_chunks``) would remain; returns the arenas unmapped.

        Also reorders the free list so chunks of older arenas are lent first, which is
        what lets a grown arena empty out once the load falls. O(chunks); the loop
        calls it about once a second, only while the pool is grown.
        """
        if len(self._arenas) < 2:
            return 0
        free = self._free
        index = {id(a[0]): i for i, a in enumerate(self._arenas)}
        where = self._where
        counts = [0] * len(self._arenas)
        for v in free:
            counts[index[id(where[id(v)][0])]] += 1
        gone: set[int] = set()
        left = len(free)
        for i in range(len(self._arenas) - 1, 0, -1):
            n = len(self._arenas[i][1])
            if counts[i] == n and left - n >= self.grow_chunks:
                gone.add(i)
                left -= n
        keep = [v for v in free if index[id(where[id(v)][0])] not in gone]
        # Pop order: last element first; sort so the oldest arena's lowest chunk is last.
        keep.sort(key=lambda v: (index[id(where[id(v)][0])], where[id(v)][1]), reverse=True)
        free[:] = keep
        for i in sorted(gone, reverse=True):
            arena, views = self._arenas.pop(i)
            for v in views:
                del where[id(v)]
                v.release()
            self.chunks_total -= len(views)
            del views
            try:
                arena.close()
            except BufferError:  # pragma: no cover - a stray export; the GC unmaps it later
                pass
            self._shrinks_total += 1
        return len(gone)

    def stats(self) -> PoolStats:
        free = len(self._free)
        return PoolStats(
            chunk_size=self.chunk_size,
            chunks_total=self.chunks_total,
            chunks_in_use=self.chunks_total - free,
            chunks_free=free,
            high_water=self._high_water,
            exhausted_total=self._exhausted_total,
            overflow_in_use=self._overflow_in_use,
            overflow_total=self._overflow_total,
            chunks_max=self.chunks_max,
            grows_total=self._grows_total,
            shrinks_total=self._shrinks_total,
        )
