"""BufferPool and RingBuffer alone, the ring checked against a bytearray model."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from reactor.pool import BufferPool, PoolStats
from reactor.ring import RingBuffer

# -- BufferPool -----------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "chunks"), [(63, 1), (0, 4), (64, 0), (64, -1)])
def test_pool_rejects_bad_sizes(chunk_size, chunks):
    bad = chunk_size if chunk_size < 64 else chunks
    with pytest.raises(ValueError, match=str(bad)):
        BufferPool(chunk_size, chunks)


def test_acquire_gives_distinct_chunks_until_exhausted():
    pool = BufferPool(64, 3)
    got = [pool.acquire() for _ in range(3)]
    assert all(isinstance(c, memoryview) and len(c) == 64 and not c.readonly for c in got)
    got[0][:] = b"a" * 64
    assert bytes(got[1]) == bytes(64)  # chunks do not overlap
    assert pool.chunks_in_use == 3 and pool.chunks_free == 0
    assert pool.acquire() is None
    assert pool.acquire() is None
    assert pool.stats().exhausted_total == 2


def test_acquire_keep_reserves_chunks():
    pool = BufferPool(64, 3)
    assert pool.acquire(keep=2) is not None  # 3 free > 2
    assert pool.acquire(keep=2) is None      # 2 free, not more than 2
    assert pool.acquire(keep=1) is not None
    assert pool.acquire(keep=1) is None
    assert pool.chunks_free == 1
    assert pool.stats().exhausted_total == 2
    with pytest.raises(ValueError, match="-1"):
        pool.acquire(keep=-1)


def test_release_is_lifo():
    pool = BufferPool(64, 4)
    a, b = pool.acquire(), pool.acquire()
    pool.release(a)
    pool.release(b)
    assert pool.acquire() is b  # the hottest chunk comes back first
    assert pool.acquire() is a


def test_borrow_overflows_to_the_heap_and_never_fails():
    pool = BufferPool(64, 2)
    arena = [pool.borrow(), pool.borrow()]
    extra = [pool.borrow(), pool.borrow()]
    assert all(len(c) == 64 and not c.readonly for c in extra)
    s = pool.stats()
    assert (s.chunks_in_use, s.overflow_in_use, s.overflow_total) == (2, 2, 2)
    assert pool.acquire() is None  # borrow() left nothing for the receive side
    for c in extra:
        pool.release(c)
    s = pool.stats()
    assert (s.chunks_in_use, s.overflow_in_use, s.overflow_total) == (2, 0, 2)
    for c in arena:
        pool.release(c)
    assert pool.chunks_free == 2 and pool.chunks_in_use == 0


def test_high_water_and_stats():
    pool = BufferPool(128, 5)
    chunks = [pool.acquire() for _ in range(3)]
    for c in chunks:
        pool.release(c)
    pool.borrow()
    s = pool.stats()
    assert s == PoolStats(
        chunk_size=128, chunks_total=5, chunks_in_use=1, chunks_free=4,
        high_water=3, exhausted_total=0, overflow_in_use=0, overflow_total=0,
        chunks_max=5, grows_total=0, shrinks_total=0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.chunks_free = 0  # type: ignore[misc]
    assert not hasattr(s, "__dict__")  # slots=True


# -- RingBuffer, examples -----------------------------------------------------------


def test_empty_rings_hold_nothing():
    pool = BufferPool(64, 4)
    rings = [RingBuffer(pool) for _ in range(10_000)]
    assert all(r._chunks is None and r.chunks_held == 0 and len(r) == 0 for r in rings)
    assert pool.chunks_in_use == 0
    assert not hasattr(rings[0], "__dict__")
    assert sys.getsizeof(rings[0]) <= 96  # five slots and the object header


def test_ring_gives_chunks_back_as_soon_as_emptied():
    pool = BufferPool(64, 8)
    ring = RingBuffer(pool)
    ring.write(bytes(range(200)))
    assert ring.chunks_held == 4 and pool.chunks_in_use == 4
    ring.consume(64)
    assert ring.chunks_held == 3 and pool.chunks_in_use == 3
    assert ring.take(136) == bytes(range(64, 200))
    assert ring._chunks is None and pool.chunks_in_use == 0


def test_writable_commit_and_commit_zero():
    pool = BufferPool(64, 2)
    ring = RingBuffer(pool)
    view = ring.writable()
    assert len(view) == 64
    ring.commit(0)  # nothing was read: the chunk goes back
    assert ring._chunks is None and pool.chunks_in_use == 0
    view = ring.writable()
    view[:10] = b"0123456789"
    ring.commit(10)
    rest = ring.writable()
    assert len(rest) == 54
    with pytest.raises(ValueError):
        ring.commit(55)
    rest[:54] = b"x" * 54
    ring.commit(54)
    assert ring.writable(keep=1) is None  # only one chunk free: keep it for others
    view = ring.writable()
    ring.commit(0)
    assert ring.chunks_held == 1 and len(ring) == 64
    assert b"".join(ring.segments()) == b"0123456789" + b"x" * 54


def test_writable_returns_the_prebuilt_view_for_a_fresh_chunk():
    pool = BufferPool(64, 2)
    expected = pool._free[-1]
    ring = RingBuffer(pool)
    assert ring.writable() is expected


def test_write_accepts_any_bytes_like():
    import array

    pool = BufferPool(64, 2)
    ring = RingBuffer(pool)
    ring.write(bytearray(b"ab"))
    ring.write(memoryview(b"cd"))
    ring.write(array.array("H", [0x0101]))
    ring.write(b"")
    assert ring.take(len(ring)) == b"abcd\x01\x01"


def test_find_takes_a_single_byte():
    ring = RingBuffer(BufferPool(64, 1))
    ring.write(b"abc")
    with pytest.raises(ValueError):
        ring.find(b"ab")
    with pytest.raises(ValueError):
        ring.rfind(b"")


def test_find_across_chunks_respects_start_and_end():
    ring = RingBuffer(BufferPool(64, 4))
    ring.write(b"." * 10)
    ring.consume(5)  # the first chunk now starts mid-way
    ring.write(b"\n" + b"." * 100 + b"\n" + b"." * 20)
    # ring: 5 dots, \n at 5, 100 dots, \n at 106, 20 dots
    assert (ring.find(b"\n"), ring.rfind(b"\n")) == (5, 106)
    assert (ring.find(b"\n", 6), ring.rfind(b"\n", 0, 106)) == (106, 5)
    assert (ring.find(b"\n", 6, 106), ring.rfind(b"\n", 6, 106)) == (-1, -1)
    assert (ring.find(b"\n", -20), ring.rfind(b"\n", -200, -21)) == (-1, 5)


def test_segments_are_capped_and_skip_the_empty_chunk():
    pool = BufferPool(64, 8)
    ring = RingBuffer(pool)
    ring.write(b"z" * 192)
    ring.writable()  # a fourth, empty chunk awaiting commit
    assert [len(s) for s in ring.segments()] == [64, 64, 64]
    assert [len(s) for s in ring.segments(max_segments=2)] == [64, 64]
    ring.commit(0)
    ring.consume(10)
    assert [len(s) for s in ring.segments()] == [54, 64, 64]
    with pytest.raises(ValueError):
        ring.segments(0)


# -- RingBuffer against a model -----------------------------------------------------

CHUNK = 64
# Mostly filler with a few of the bytes find() looks for, so a search often
# has a hit before start or after end but none inside.
sparse = st.lists(
    st.sampled_from([b".", b"." * 20, b"\n", b"\x00", b"a"]), max_size=40
).map(b"".join)


class RingMachine(RuleBasedStateMachine):
    """Two rings sharing a small pool, so chains, exhaustion and overflow all happen."""

    @initialize(chunks=st.integers(1, 6), extra=st.integers(0, 6), step=st.integers(1, 3))
    def setup(self, chunks, extra, step):
        # extra > 0: an elastic pool, so growth and trim() happen under the rings too
        self.pool = BufferPool(CHUNK, chunks, max_chunks=chunks + extra, grow_chunks=step)
        self.rings = [RingBuffer(self.pool), RingBuffer(self.pool)]
        self.models = [bytearray(), bytearray()]

    @rule(i=st.integers(0, 1), data=st.binary(max_size=3 * CHUNK) | sparse)
    def write(self, i, data):
        self.rings[i].write(data)
        self.models[i] += data

    @rule(i=st.integers(0, 1), keep=st.integers(0, 2), d=st.data())
    def recv(self, i, keep, d):
        ring = self.rings[i]
        free_before = self.pool.chunks_free
        view = ring.writable(keep)
        if view is None:
            assert free_before <= keep
            return
        assert 0 < len(view) <= CHUNK
        payload = d.draw(st.binary(max_size=len(view)))
        view[:len(payload)] = payload
        ring.commit(len(payload))
        self.models[i] += payload

    @rule(i=st.integers(0, 1), d=st.data())
    def consume(self, i, d):
        n = d.draw(st.integers(0, len(self.models[i])))
        self.rings[i].consume(n)
        del self.models[i][:n]

    @rule(i=st.integers(0, 1), d=st.data())
    def take(self, i, d):
        n = d.draw(st.integers(0, len(self.models[i])))
        assert self.rings[i].take(n) == self.models[i][:n]
        del self.models[i][:n]

    @rule(i=st.integers(0, 1), d=st.data())
    def peek(self, i, d):
        m = len(self.models[i])
        offset = d.draw(st.integers(0, m))
        n = d.draw(st.integers(0, m - offset))
        assert self.rings[i].peek(n, offset) == self.models[i][offset:offset + n]

    @rule(i=st.integers(0, 1), n=st.integers(1, 4))
    def peek_past_the_end(self, i, n):
        with pytest.raises(ValueError):
            self.rings[i].peek(n, len(self.models[i]))
        with pytest.raises(ValueError):
            self.rings[i].consume(len(self.models[i]) + n)

    @rule(
        i=st.integers(0, 1),
        byte=st.sampled_from([b"\n", b"\x00", b"a"]),
        start=st.integers(-300, 300),
        end=st.none() | st.integers(-300, 300),
    )
    def find(self, i, byte, start, end):
        ring, model = self.rings[i], self.models[i]
        assert ring.find(byte, start, end) == model.find(byte, start, end)
        assert ring.rfind(byte, start, end) == model.rfind(byte, start, end)
        assert ring.find(byte) == model.find(byte)
        assert ring.rfind(byte) == model.rfind(byte)

    @rule(i=st.integers(0, 1), max_segments=st.integers(1, 8))
    def segments(self, i, max_segments):
        segs = self.rings[i].segments(max_segments)
        assert len(segs) <= max_segments
        assert all(len(s) for s in segs)
        joined = b"".join(segs)
        assert joined == self.models[i][:len(joined)]
        if len(segs) < max_segments:
            assert len(joined) == len(self.models[i])

    @rule()
    def trim(self):
        before = self.pool.stats()
        gone = self.pool.trim()
        after = self.pool.stats()
        assert after.shrinks_total == before.shrinks_total + gone
        assert after.chunks_in_use == before.chunks_in_use  # only free arenas go

    @rule(i=st.integers(0, 1))
    def clear(self, i):
        self.rings[i].clear()
        self.models[i].clear()

    @invariant()
    def lengths_match(self):
        for ring, model in zip(self.rings, self.models):
            assert len(ring) == len(model)

    @invariant()
    def no_chunk_leaked(self):
        s = self.pool.stats()
        assert s.chunks_free + s.chunks_in_use == s.chunks_total
        assert s.chunks_in_use + s.overflow_in_use == sum(r.chunks_held for r in self.rings)
        assert s.high_water >= s.chunks_in_use

    @invariant()
    def empty_ring_holds_nothing(self):
        for ring in self.rings:
            if not len(ring):
                assert ring._chunks is None and ring.chunks_held == 0


RingMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestRing = RingMachine.TestCase


# -- the elastic pool: growth up to the cap, trim back to the first arena ------------------

def test_pool_grows_in_arenas_up_to_the_cap_then_refuses():
    pool = BufferPool(64, 2, max_chunks=7, grow_chunks=2)
    held = [pool.acquire() for _ in range(7)]
    assert all(c is not None for c in held)
    s = pool.stats()
    assert (s.chunks_total, s.chunks_max, s.grows_total) == (7, 7, 3)  # 2 + 2 + 2 + 1 (cap)
    assert pool.is_low() and pool.acquire() is None
    assert pool.stats().exhausted_total == 1
    over = pool.borrow()  # the send side still gets a chunk, from the heap
    assert pool.stats().overflow_in_use == 1
    pool.release(over)
    for c in held:
        pool.release(c)
    assert pool.stats().chunks_in_use == 0 and not pool.is_low()


def test_on_grow_is_called_once_for_each_arena_mapped():
    pool = BufferPool(64, 2, max_chunks=6, grow_chunks=2)
    grew = []
    pool.on_grow = lambda: grew.append(pool.stats().chunks_total)
    held = [pool.acquire() for _ in range(3)]
    held.append(pool.borrow())  # the send side grows the pool as well
    held += [pool.borrow() for _ in range(3)]  # the cap: heap chunks, no growth
    assert grew == [4, 6]
    for c in held:
        pool.release(c)


def test_is_low_takes_nothing_and_counts_nothing():
    pool = BufferPool(64, 2, max_chunks=4, grow_chunks=2)
    a, b = pool.acquire(), pool.acquire()
    assert not pool.is_low()       # empty, but the cap allows one more arena
    assert pool.stats().chunks_total == 2
    c = pool.acquire()
    assert pool.is_low(keep=1) and not pool.is_low(keep=0)
    assert pool.stats().exhausted_total == 0 and pool.chunks_in_use == 3
    for x in (a, b, c):
        pool.release(x)


def test_trim_unmaps_only_wholly_free_grown_arenas_and_keeps_headroom():
    pool = BufferPool(64, 2, max_chunks=8, grow_chunks=2)
    held = [pool.acquire() for _ in range(8)]
    for c in held[:6]:
        pool.release(c)
    # Arenas: first [0, 1], then [2, 3], [4, 5], [6, 7]; chunks 6 and 7 still lent.
    assert pool.trim() == 2           # [2, 3] and [4, 5] are free; [6, 7] is not
    s = pool.stats()
    assert (s.chunks_total, s.chunks_in_use, s.shrinks_total) == (4, 2, 2)
    held[6][:4] = b"keep"            # a lent chunk of a kept arena is still good memory
    assert bytes(held[6][:4]) == b"keep"
    pool.release(held[6])
    pool.release(held[7])
    # All free now: the first arena's 2 free chunks are the headroom, so [6, 7] goes too.
    assert pool.trim() == 1
    assert pool.stats().chunks_total == 2 and not pool.grown
    assert pool.trim() == 0


def test_trim_reorders_so_the_first_arena_is_lent_first():
    pool = BufferPool(64, 2, max_chunks=4, grow_chunks=2)
    held = [pool.acquire() for _ in range(4)]
    for c in held:
        pool.release(c)              # the free stack now pops grown-arena chunks first
    assert pool.trim() == 1          # the grown arena goes; the first keeps 2 free

    first = {id(c) for c in held[:2]}
    again = [pool.acquire(), pool.acquire()]
    assert {id(c) for c in again} == first


def test_pool_rejects_a_cap_below_its_first_arena():
    with pytest.raises(ValueError, match="max_chunks 1 is below chunks 2"):
        BufferPool(64, 2, max_chunks=1)
    with pytest.raises(ValueError, match="grow_chunks 0"):
        BufferPool(64, 2, max_chunks=4, grow_chunks=0)


class PoolMachine(RuleBasedStateMachine):
    """The elastic pool against a model: what is lent, the capacity and its bounds."""

    @initialize(first=st.integers(1, 4), extra=st.integers(0, 8), step=st.integers(1, 4))
    def setup(self, first, extra, step):
        self.pool = BufferPool(64, first, max_chunks=first + extra, grow_chunks=step)
        self.first = first
        self.lent: list = []
        self.overflow: list = []

    @rule(keep=st.integers(0, 3))
    def acquire(self, keep):
        free_before = self.pool.chunks_free
        room = self.pool.chunks_max - self.pool.chunks_total
        c = self.pool.acquire(keep)
        if c is None:  # refused only when growing could not give more than keep free
            assert free_before + room <= keep
        else:
            assert len(c) == 64 and type(c.obj).__name__ == "mmap"
            c[:1] = b"x"
            self.lent.append(c)

    @rule()
    def borrow(self):
        c = self.pool.borrow()
        (self.lent if type(c.obj).__name__ == "mmap" else self.overflow).append(c)

    @rule(data=st.data())
    def release(self, data):
        if self.lent or self.overflow:
            src = data.draw(st.sampled_from([x for x in (self.lent, self.overflow) if x]))
            self.pool.release(src.pop(data.draw(st.integers(0, len(src) - 1))))

    @rule()
    def trim(self):
        in_use = self.pool.chunks_in_use
        self.pool.trim()
        assert self.pool.chunks_in_use == in_use
        for c in self.lent:  # every lent chunk is still mapped and writable
            c[:1] = b"y"

    @invariant()
    def bounds_hold(self):
        s = self.pool.stats()
        assert self.first <= s.chunks_total <= s.chunks_max
        assert s.chunks_in_use == len(self.lent)
        assert s.overflow_in_use == len(self.overflow)
        assert s.chunks_free + s.chunks_in_use == s.chunks_total
        assert len({id(c) for c in self.lent}) == len(self.lent)  # never lent twice


PoolMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestPoolMachine = PoolMachine.TestCase
