"""BufferPool: one preallocated arena cut into fixed chunks, lent out O(1).

This module owns the arena and its free list, nothing else: it knows no
sockets, rings or connections. Rings (``reactor/ring.py``) borrow chunks here
and give them back the moment they are empty, so idle connections hold none.
"""

from __future__ import annotations

import dataclasses
import mmap

__all__ = ["BufferPool", "PoolStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a :class:`BufferPool`; gauges are current, ``*_total`` are counters."""

    chunk_size: int
    chunks_total: int
    chunks_in_use: int      #: arena chunks lent out
    chunks_free: int
    high_water: int         #: the most arena chunks ever lent out at once
    exhausted_total: int    #: acquire() calls refused because too few chunks were free
    overflow_in_use: int    #: heap chunks lent by borrow() while the arena was empty
    overflow_total: int


class BufferPool:
    """Fixed-size chunks from one anonymous ``mmap`` arena.

    Every chunk is a writable ``memoryview`` of exactly ``chunk_size`` bytes,
    built once at construction. The free list is a stack, so the chunk released
    last is lent next while its pages are still hot. The arena is an anonymous
    private mapping: pages that were never written cost no RSS.

    Callers must give back exactly the views they received, once each; the
    pool does not check for double release (that would cost a lookup per call).
    """

    __slots__ = (
        "chunk_size",
        "chunks_total",
        "_arena",
        "_free",
        "_offsets",
        "_high_water",
        "_exhausted_total",
        "_overflow_in_use",
        "_overflow_total",
    )

    def __init__(self, chunk_size: int = 16384, chunks: int = 4096) -> None:
        """Map ``chunk_size * chunks`` bytes.

        ``ValueError`` if ``chunk_size < 64`` or ``chunks < 1``.
        """
        if chunk_size < 64:
            raise ValueError(f"chunk_size {chunk_size} is below the minimum of 64")
        if chunks < 1:
            raise ValueError(f"chunks {chunks} must be at least 1")
        self.chunk_size = chunk_size
        self.chunks_total = chunks
        self._arena = mmap.mmap(-1, chunk_size * chunks, flags=mmap.MAP_PRIVATE)
        whole = memoryview(self._arena)
        views = [whole[i * chunk_size:(i + 1) * chunk_size] for i in range(chunks)]
        # Reversed so the first acquire() gets the chunk at offset 0: the arena
        # is then touched from its start, which keeps RSS compact.
        self._free = views[::-1]  # never rebound: Loop keeps a reference for a cheap len()
        # Where each chunk starts in the arena: a memoryview has no find(), so
        # rings search the arena itself (mmap.find is C-level) at this offset.
        self._offsets = {id(v): i * chunk_size for i, v in enumerate(views)}
        self._high_water = 0
        self._exhausted_total = 0
        self._overflow_in_use = 0
        self._overflow_total = 0

    @property
    def chunks_free(self) -> int:
        """Arena chunks ready to be lent."""
        return len(self._free)

    @property
    def chunks_in_use(self) -> int:
        """Arena chunks lent out (overflow chunks are not counted here)."""
        return self.chunks_total - len(self._free)

    def acquire(self, keep: int = 0) -> memoryview | None:
        """Lend an arena chunk if more than ``keep`` chunks are free, else return ``None``.

        For the receive side: a ``None`` means "stop reading", and is counted in
        ``exhausted_total``. ``keep`` (>= 0) reserves chunks for other users.
        """
        free = self._free
        if len(free) > keep:
            if keep < 0:
                raise ValueError(f"keep {keep} must not be negative")
            chunk = free.pop()
            in_use = self.chunks_total - len(free)
            if in_use > self._high_water:
                self._high_water = in_use
            return chunk
        self._exhausted_total += 1
        return None

    def borrow(self) -> memoryview:
        """Lend an arena chunk, or a heap-allocated chunk of the same size if none is free.

        For the send side: a write never fails for want of a chunk. Heap chunks
        are counted in ``overflow_in_use``/``overflow_total``. Never ``None``.
        """
        free = self._free
        if free:
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
        if chunk.obj is self._arena:
            self._free.append(chunk)
        else:
            self._overflow_in_use -= 1

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
        )
