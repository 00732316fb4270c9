"""TimerWheel: a hierarchical hashed timing wheel (Varghese & Lauck, scheme 7).

This module owns every timer's deadline and the order timers fire in. It reads
time only through the injected clock, knows no sockets or connections, and is
single-threaded: the loop calls :meth:`TimerWheel.expire` once per iteration.
Schedule, cancel and rearm are O(1); rearming to a later deadline is one store.
"""

# How it works (the one subtle thing here)
#
# Time is counted in integer ticks of ``tick_s``. A deadline tick is
# ceil(when / tick_s) and "now" is floor(now / tick_s), so nothing fires before
# its tick has fully passed. ``_cur`` is the last tick processed.
#
# Level 0 has 256 buckets of one tick; levels 1..4 have 64 buckets of 2**8,
# 2**14, 2**20 and 2**26 ticks. A timer goes in the lowest level whose range
# covers ``deadline - _cur``; past the top level's range (2**32 ticks, 49.7 days
# at 1 ms) it parks in the top level's farthest bucket. A bucket is processed
# at the first tick > _cur whose low bits for its level are zero and whose index
# matches; the placement rule guarantees that tick is <= every deadline in the
# bucket (level 0: exactly the deadline). Processing re-places each entry from
# that tick: it lands in a lower level or, if due, in the firing list. So a
# timer is moved at most once per level, and there is no other cascading.
#
# Invariant: every entry sits in a bucket processed at a tick in (_cur, deadline].
# expire() and next_deadline() rely on it to jump straight to the next tick at
# which a non-empty bucket is processed (one occupancy bitmask per level), so a
# loop that slept 300 s touches a handful of ticks, not 300,000.
#
# Lazy rearm (Netty's IdleStateHandler does the same: its task checks the last
# read time when it runs and reschedules for the rest): a later deadline is only
# stored; when the old bucket is processed the entry is re-placed, not fired.
# That keeps the invariant: the processing tick was <= old deadline <= new one.
#
# Two extra lists hold timers that are no longer in the wheel proper, both kept
# sorted by deadline and never rearmed lazily (a store there could break the
# order): ``_firing`` holds due timers that expire() is about to run (and those
# a spent budget left over), ``_due`` holds timers scheduled at or before
# ``_limit``. Outside expire() ``_limit == _cur``: a deadline already passed.
# Inside expire() ``_limit`` is the tick being caught up to, so whatever a
# callback schedules for "now" waits for the next expire() call (asyncio's
# _run_once runs only what was ready when the pass began).

from __future__ import annotations

import dataclasses
import logging
import math
from array import array
from typing import Any, Callable

from .clock import Clock

__all__ = ["Timer", "TimerEntry", "TimerWheel", "WheelStats"]

_log = logging.getLogger("reactor")

_ceil = math.ceil
_floor = math.floor

_LAG_SAMPLES = 1024          # power of two: the ring index is a mask
_LAG_MASK = _LAG_SAMPLES - 1
_INVALID = -1                # next-deadline cache: recompute on demand
_NO_TIMERS = 1 << 80         # next-deadline cache: nothing scheduled (past any tick)
_L0_MASK = (1 << 256) - 1
_LK_MASK = (1 << 64) - 1
_FIRST_L1 = 1 << 8           # level 0 covers deltas below this
_FIRST_L2 = 1 << 14
_FIRST_L3 = 1 << 20
_FIRST_L4 = 1 << 26
_TOP_END = 1 << 32           # the top level covers deltas below this


class _Bucket:
    """Sentinel of a circular intrusive list of timers, plus its occupancy bit. ``_lazy``:
    a wheel bucket, where rearm may just store a later deadline (not the firing and due
    lists, nor the "not scheduled" sentinel, which a rearm must unlink from or schedule anew)."""

    __slots__ = ("_prev", "_next", "_level", "_bit", "_lazy")

    def __init__(self, level: int, bit: int, lazy: bool) -> None:
        self._prev: Any = self
        self._next: Any = self
        self._level = level
        self._bit = bit
        self._lazy = lazy


# The bucket of every timer that is not scheduled; nothing is ever linked into it.
_INACTIVE = _Bucket(-1, 0, False)


class TimerEntry:
    """What the wheel links: a deadline tick and the links of its bucket. :class:`Timer` is
    the usual kind; a long-lived object can instead *be* its own timer by subclassing this and
    overriding :meth:`_fire` (a connection does): no timer object, callback or bound method
    per owner, 32 bytes of slots. Call ``TimerEntry.__init__(self)`` before the first rearm."""

    __slots__ = ("_deadline", "_bucket", "_prev", "_next")

    def __init__(self) -> None:
        self._deadline = 0
        self._bucket: _Bucket = _INACTIVE
        self._prev: Any = None
        self._next: Any = None

    def _fire(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class Timer(TimerEntry):
    """A scheduled callback, created only by :class:`TimerWheel`: ``callback(*args)`` runs
    once when the deadline passes; :meth:`TimerWheel.rearm` reschedules it after it fired or
    was cancelled."""

    __slots__ = ("callback", "args", "_tick_s")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...], tick_s: float) -> None:
        TimerEntry.__init__(self)
        self.callback = callback
        self.args = args
        self._tick_s = tick_s

    @property
    def active(self) -> bool:
        """True while scheduled: not yet fired and not cancelled."""
        return self._bucket is not _INACTIVE

    @property
    def when(self) -> float:
        """The deadline in clock seconds, rounded up to a whole tick."""
        return self._deadline * self._tick_s

    def _fire(self) -> None:
        self.callback(*self.args)

    def __repr__(self) -> str:
        state = "active" if self._bucket is not _INACTIVE else "idle"
        return f"<Timer {state} when={self.when:.6f} callback={self.callback!r}>"


@dataclasses.dataclass(frozen=True, slots=True)
class WheelStats:
    """A snapshot of a :class:`TimerWheel`; gauges are current, ``*_total`` are counters."""

    timers: int             #: timers scheduled now
    scheduled_total: int    #: call_at/call_later, plus rearms of idle timers
    fired_total: int
    cancelled_total: int    #: cancels of scheduled timers (no-op cancels not counted)
    lag_p50_s: float        #: lateness (fire time - deadline) over the last 1024 fires;
    lag_p99_s: float        #: 0.0 before anything fired


def _log_timer_error(timer: Timer, exc: Exception) -> None:
    _log.exception("timer callback %r raised", getattr(timer, "callback", timer), exc_info=exc)


class TimerWheel:
    """Timers on a hierarchical wheel of ``tick_s`` ticks, driven by :meth:`expire`.

    Deadlines are rounded up to whole ticks (by :meth:`rearm_coarse`, to the grain:
    ``grain_s`` apart from ``phase_s``); a timer fires in the first ``expire()`` whose
    ``clock.now()`` has passed its deadline tick, never earlier. ``on_error(timer, exc)``
    receives any ``Exception`` a callback raises (default: logged on the ``reactor``
    logger); the remaining timers still fire. ``ValueError`` if ``tick_s <= 0``.
    """

    __slots__ = (
        "_now", "_tick_s", "_on_error", "_cur", "_limit", "_next_tick", "_last_deadline",
        "_masks", "_l0", "_l1", "_l2", "_l3", "_l4", "_due", "_firing", "_expiring", "_count",
        "_scheduled_total", "_fired_total", "_cancelled_total", "_ticks_processed", "_lag",
        "_lag_count", "_grain", "_phase",
    )

    def __init__(
        self,
        clock: Clock,
        tick_s: float = 0.001,
        on_error: Callable[[Timer, Exception], object] | None = None,
        grain_s: float = 0.0,
        phase_s: float = 0.0,
    ) -> None:
        if not tick_s > 0:  # also rejects NaN
            raise ValueError(f"tick_s {tick_s} must be > 0")
        if not grain_s >= 0 or not phase_s >= 0:
            raise ValueError(f"grain_s {grain_s} and phase_s {phase_s} must be >= 0")
        self._now = clock.now
        self._tick_s = float(tick_s)
        # rearm_coarse's deadlines: ticks congruent to _phase modulo _grain (in ticks).
        self._grain = max(1, round(grain_s / tick_s))
        self._phase = round(phase_s / tick_s) % self._grain
        self._on_error = on_error if on_error is not None else _log_timer_error
        self._cur = self._tick_floor(clock.now())
        self._limit = self._cur
        self._next_tick = _NO_TIMERS
        self._last_deadline = -1
        # Occupancy per level; slot 5 is a scratch word for the two lists below,
        # so unlinking needs no branch on what kind of bucket it leaves.
        self._masks = [0, 0, 0, 0, 0, 0]
        self._l0 = [_Bucket(0, 1 << i, True) for i in range(256)]
        self._l1 = [_Bucket(1, 1 << i, True) for i in range(64)]
        self._l2 = [_Bucket(2, 1 << i, True) for i in range(64)]
        self._l3 = [_Bucket(3, 1 << i, True) for i in range(64)]
        self._l4 = [_Bucket(4, 1 << i, True) for i in range(64)]
        self._due = _Bucket(5, 1, False)
        self._firing = _Bucket(5, 1, False)
        self._expiring = False
        self._count = 0
        self._scheduled_total = 0
        self._fired_total = 0
        self._cancelled_total = 0
        self._ticks_processed = 0   # ticks expire() stopped at; tests check the skip-ahead
        self._lag = array("d", bytes(8 * _LAG_SAMPLES))
        self._lag_count = 0

    # -- scheduling ---------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once the clock reaches ``when`` (clock seconds).

        A ``when`` already past fires on the next :meth:`expire`. Returns the
        :class:`Timer`. ``TypeError`` if ``callback`` is not callable,
        ``ValueError`` if ``when`` is NaN or infinite.
        """
        if not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable")
        try:
            d = _ceil(when / self._tick_s)
        except (OverflowError, ValueError):
            raise ValueError(f"timer deadline {when} is not a finite number") from None
        timer = Timer(callback, args, self._tick_s)
        self._schedule(timer, d)
        self._count += 1
        self._scheduled_total += 1
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` ``delay`` seconds after ``clock.now()``.

        ``delay < 0`` counts as 0. A timer scheduled from a callback with
        ``delay`` 0 fires on the next :meth:`expire` call, never the running
        one. Errors as :meth:`call_at`.
        """
        if delay < 0.0:
            delay = 0.0
        return self.call_at(self._now() + delay, callback, *args)

    def cancel(self, timer: TimerEntry) -> None:
        """Unschedule ``timer``; O(1). A no-op on a fired or cancelled timer."""
        b = timer._bucket
        if b is _INACTIVE:
            return
        p, n = timer._prev, timer._next
        p._next = n
        n._prev = p
        if p is n:  # the bucket is empty now
            self._masks[b._level] ^= b._bit
        timer._bucket = _INACTIVE
        # Drop the links so a cancelled timer the caller keeps does not pin its
        # old neighbours in memory.
        timer._prev = timer._next = None
        self._cancelled_total += 1
        self._count -= 1
        if not self._count:
            self._next_tick = _NO_TIMERS

    def rearm(self, timer: TimerEntry, delay: float) -> None:
        """Move ``timer``'s deadline to ``delay`` seconds from now (``delay < 0`` counts as 0).

        Works on scheduled, fired and cancelled timers alike (the last two are scheduled
        again, same object). O(1), no allocation; a later deadline on a scheduled timer is one
        compare and one store. ``ValueError`` if ``delay`` is NaN or infinite."""
        self._rearm(timer, self._tick_after(delay))

    def rearm_coarse(self, timer: TimerEntry, delay: float) -> None:
        """As :meth:`rearm`, with the deadline rounded up onto the wheel's grain (``grain_s``
        apart, offset by ``phase_s``): timers due within one grain share one tick, so a loop
        holding many periodic ones (a connection's idle and heartbeat checks) wakes once per
        grain for all of them instead of once per timer. Never earlier than ``delay``."""
        d = self._tick_after(delay)
        self._rearm(timer, d + (self._phase - d) % self._grain)

    def _tick_after(self, delay: float) -> int:
        """The deadline tick ``delay`` seconds from now (``delay < 0`` counts as 0)."""
        if delay < 0.0:  # a float literal: float-float compares are the cheap ones
            delay = 0.0
        try:
            return _ceil((self._now() + delay) / self._tick_s)
        except (OverflowError, ValueError):
            raise ValueError(f"timer delay {delay} is not a finite number") from None

    def _rearm(self, timer: TimerEntry, d: int) -> None:
        # Entries armed in the same tick share one int object for their deadline (an int
        # this large is 28 bytes; 10,000 connections accepted in a second share ~1,000).
        last = self._last_deadline
        if d == last:
            d = last
        else:
            self._last_deadline = d
        if d >= timer._deadline and timer._bucket._lazy:
            timer._deadline = d
            return
        self._move(timer, d)

    def rearm_sooner(self, timer: TimerEntry, delay: float) -> None:
        """Make ``timer`` fire within ``delay`` seconds: as :meth:`rearm`, except that a
        timer already scheduled at or before that deadline is left alone (one compare).

        For a check that must run by some time but may run earlier, such as a
        connection's one timer when a partial frame starts its deadline.
        """
        d = self._tick_after(delay)
        if timer._bucket is not _INACTIVE and timer._deadline <= d:
            return
        self._move(timer, d)

    def _move(self, timer: TimerEntry, d: int) -> None:
        """Unlink ``timer`` if it is scheduled, then schedule it for tick ``d``."""
        b = timer._bucket
        if b is _INACTIVE:
            self._count += 1
            self._scheduled_total += 1
        else:
            p, n = timer._prev, timer._next
            p._next = n
            n._prev = p
            if p is n:
                self._masks[b._level] ^= b._bit
        self._schedule(timer, d)

    def _schedule(self, timer: TimerEntry, d: int) -> None:
        """Link an unlinked timer for deadline tick ``d``; counters are the caller's."""
        timer._deadline = d
        if d <= self._limit:
            self._insert_due(timer)
        else:
            self._place(timer, d, self._cur)
        if d < self._next_tick:  # an _INVALID cache stays invalid
            self._next_tick = d

    def _place(self, timer: TimerEntry, d: int, cur: int) -> None:
        """Link ``timer`` (deadline ``d > cur``) into the wheel bucket for ``d - cur``."""
        delta = d - cur
        if delta < _FIRST_L1:
            b = self._l0[d & 255]
        elif delta < _FIRST_L2:
            b = self._l1[(d >> 8) & 63]
        elif delta < _FIRST_L3:
            b = self._l2[(d >> 14) & 63]
        elif delta < _FIRST_L4:
            b = self._l3[(d >> 20) & 63]
        elif delta < _TOP_END:
            b = self._l4[(d >> 26) & 63]
        else:
            # Beyond the top level: park in the bucket processed last, about
            # 2**32 ticks on, and be re-placed from there.
            b = self._l4[(cur >> 26) & 63]
        p = b._prev
        timer._prev = p
        timer._next = b
        p._next = timer
        b._prev = timer
        timer._bucket = b
        if p is b:  # was empty
            self._masks[b._level] |= b._bit

    def _insert_due(self, timer: TimerEntry) -> None:
        """Link ``timer`` into the due list, keeping it sorted by deadline (FIFO on ties)."""
        s = self._due
        d = timer._deadline
        p = s._prev
        while p is not s and p._deadline > d:  # rarely moves: new deadlines are the latest
            p = p._prev
        n = p._next
        timer._prev = p
        timer._next = n
        p._next = timer
        n._prev = timer
        timer._bucket = s

    # -- the loop's side ----------------------------------------------------------

    def next_deadline(self) -> float | None:
        """A lower bound on the earliest deadline, in clock seconds; ``None`` if no timers.

        It is the next tick at which expire() has work, so it may be earlier
        than any deadline (a far timer being moved down a level). After a
        budget-limited :meth:`expire` left due timers it is ``<= clock.now()``.
        """
        if not self._count:
            return None
        t = self._next_tick
        if t < 0:
            t = self._compute_next_tick()
            self._next_tick = t
        return t * self._tick_s

    def _compute_next_tick(self) -> int:
        best = self._next_work_tick(self._cur)
        if best < 0:
            best = _NO_TIMERS
        for s in (self._firing, self._due):
            head = s._next
            if head is not s and head._deadline < best:
                best = head._deadline
        return best

    def _next_work_tick(self, cur: int) -> int:
        """The first tick > ``cur`` at which a non-empty wheel bucket is processed, or -1."""
        masks = self._masks
        best = -1
        m = masks[0]
        if m:
            p = (cur + 1) & 255
            r = ((m >> p) | (m << (256 - p))) & _L0_MASK
            best = cur + (r & -r).bit_length()
            if best < ((cur >> 8) + 1) << 8:
                return best  # every higher level works on a later multiple of 256
        for level, shift in ((1, 8), (2, 14), (3, 20), (4, 26)):
            m = masks[level]
            if m:
                base = (cur >> shift) + 1
                p = base & 63
                r = ((m >> p) | (m << (64 - p))) & _LK_MASK
                t = (base + (r & -r).bit_length() - 1) << shift
                if best < 0 or t < best:
                    best = t
            if best >= 0 and level < 4:
                up = shift + 6
                if best < ((cur >> up) + 1) << up:
                    return best
        return best

    def expire(self, budget: int = 10000, now: float | None = None) -> int:
        """Fire every timer whose deadline tick has passed, at most ``budget`` of them.

        Timers fire in nondecreasing deadline order. Due timers beyond the
        budget stay scheduled and fire first on the next call (next_deadline()
        is then ``<= now``). Returns how many fired. ``now``: the clock's time,
        if the caller has just read it (the loop has, once per iteration).
        ``ValueError`` if ``budget < 1``; ``RuntimeError`` if called from a
        timer callback.
        """
        if budget < 1:
            raise ValueError(f"budget {budget} must be at least 1")
        if self._expiring:
            raise RuntimeError("TimerWheel.expire() called from a timer callback")
        if now is None:
            now = self._now()
        tick = self._tick_s
        # The common call has nothing to do: now falls in [cur, the cached next tick).
        # Decided without flooring now: t * tick <= now is exactly floor(now / tick) >= t
        # as _tick_floor defines it, and an _INVALID cache (-1) never passes.
        if self._cur * tick <= now < self._next_tick * tick:
            return 0
        now_tick = self._tick_floor(now)
        cur = self._cur
        if now_tick < cur:
            now_tick = cur
        elif now_tick < self._next_tick:
            # No timer can be due before the cached next tick (a lower bound of every
            # deadline; _INVALID is -1, never above): nothing to fire, and the cache
            # stays valid for next_deadline(). _cur is left alone: buckets that are only
            # re-placed on the way (ticks <= a deadline) are processed by a later call.
            return 0
        firing = self._firing
        lag = self._lag
        lag_i = self._lag_count
        on_error = self._on_error
        fired = 0
        ticks = 0
        self._expiring = True
        self._limit = now_tick
        self._next_tick = _INVALID
        try:
            due = self._due
            if due._next is not due:
                self._drain_due(cur)
            while True:
                while firing._next is not firing:
                    if fired >= budget:
                        return fired
                    timer = firing._next
                    n = timer._next
                    firing._next = n
                    n._prev = firing
                    timer._bucket = _INACTIVE
                    timer._prev = timer._next = None
                    self._count -= 1
                    lag[lag_i & _LAG_MASK] = now - timer._deadline * tick
                    lag_i += 1
                    fired += 1
                    try:
                        timer._fire()
                    except Exception as exc:
                        on_error(timer, exc)
                if fired >= budget:
                    return fired
                t = self._next_work_tick(cur)
                if t < 0 or t > now_tick:
                    cur = now_tick  # nothing is processed in between: skip it
                    return fired
                cur = self._cur = t
                ticks += 1
                self._process_tick(t)
        finally:
            self._cur = self._limit = cur
            self._next_tick = _INVALID
            self._lag_count = lag_i
            self._fired_total += fired
            self._ticks_processed += ticks
            self._expiring = False

    def _tick_floor(self, now: float) -> int:
        """floor(now / tick_s), corrected so that tick * tick_s <= now holds in floats too."""
        tick = self._tick_s
        t = _floor(now / tick)
        if t * tick > now:
            t -= 1
        return t

    def _drain_due(self, cur: int) -> None:
        """Merge due timers with deadline <= ``cur`` into the firing list; place the rest."""
        s = self._due
        timer = s._next
        s._next = s._prev = s
        firing = self._firing
        a = firing._next  # merge cursor: both lists are sorted
        while timer is not s:
            nxt = timer._next
            d = timer._deadline
            if d <= cur:
                while a is not firing and a._deadline <= d:
                    a = a._next
                p = a._prev
                timer._prev = p
                timer._next = a
                p._next = timer
                a._prev = timer
                timer._bucket = firing
            else:
                self._place(timer, d, cur)
            timer = nxt

    def _process_tick(self, t: int) -> None:
        """Process every bucket whose turn is tick ``t`` (``_cur`` is already ``t``)."""
        masks = self._masks
        if not t & 0xFF:
            for level, shift, buckets in (
                (1, 8, self._l1), (2, 14, self._l2), (3, 20, self._l3), (4, 26, self._l4)
            ):
                if t & ((1 << shift) - 1):
                    break
                i = (t >> shift) & 63
                if masks[level] >> i & 1:
                    self._replace_bucket(buckets[i], t)
        i = t & 255
        if masks[0] >> i & 1:
            self._replace_bucket(self._l0[i], t)

    def _replace_bucket(self, b: _Bucket, t: int) -> None:
        """Empty bucket ``b`` at tick ``t``: due entries join the firing list, others move on."""
        timer = b._next
        b._next = b._prev = b
        self._masks[b._level] ^= b._bit
        firing = self._firing
        place = self._place
        while timer is not b:
            nxt = timer._next
            d = timer._deadline
            if d <= t:
                p = firing._prev
                timer._prev = p
                timer._next = firing
                p._next = timer
                firing._prev = timer
                timer._bucket = firing
            else:
                place(timer, d, t)
            timer = nxt

    # -- introspection ------------------------------------------------------------

    def __len__(self) -> int:
        """Timers scheduled now."""
        return self._count

    def stats(self) -> WheelStats:
        """A snapshot of the counters and the fire-lateness percentiles."""
        n = min(self._lag_count, _LAG_SAMPLES)
        if n:
            samples = sorted(self._lag[:n])
            p50 = samples[_ceil(0.50 * n) - 1]
            p99 = samples[_ceil(0.99 * n) - 1]
        else:
            p50 = p99 = 0.0
        return WheelStats(timers=self._count, scheduled_total=self._scheduled_total,
                          fired_total=self._fired_total, cancelled_total=self._cancelled_total,
                          lag_p50_s=p50, lag_p99_s=p99)
