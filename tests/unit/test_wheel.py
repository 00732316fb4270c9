"""TimerWheel alone, on a FakeClock, and checked against a heapq/dict model."""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from reactor.clock import FakeClock
from reactor.wheel import Timer, TimerEntry, TimerWheel, WheelStats


def deadline_tick(when: float, tick_s: float) -> int:
    """The wheel's documented rounding: deadlines round up to a whole tick."""
    return math.ceil(when / tick_s)


def now_tick(now: float, tick_s: float) -> int:
    """The wheel's documented rounding of now: down, so tick * tick_s <= now."""
    t = math.floor(now / tick_s)
    return t - 1 if t * tick_s > now else t


# -- examples -----------------------------------------------------------------------


def test_style_guide_idle_example():
    # STYLE.md section 6; the guide's ``slots=256`` is not a parameter here
    # (the level sizes are fixed by the design).
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock, tick_s=0.01)
    t = wheel.call_later(5.0, fired.append, "idle")
    clock.advance(4.0); wheel.rearm(t, 5.0)            # a byte arrived: deadline moves to 9.0
    clock.advance(4.0); wheel.expire(); assert fired == []
    clock.advance(1.1); wheel.expire(); assert fired == ["idle"]


class Entry(TimerEntry):
    """An object that is its own timer, as a connection is."""

    __slots__ = ("fired",)

    def __init__(self):
        TimerEntry.__init__(self)
        self.fired = 0

    def _fire(self):
        self.fired += 1


def test_an_object_can_be_its_own_timer():
    clock = FakeClock()
    wheel = TimerWheel(clock, tick_s=0.01)
    a, b = Entry(), Entry()
    wheel.rearm(a, 1.0)
    wheel.rearm(b, 1.0)
    clock.advance(0.5); wheel.rearm(a, 1.0)  # later: a store, fired at 1.5 instead
    wheel.cancel(b); wheel.cancel(b)  # twice is fine
    assert len(wheel) == 1
    clock.advance(0.6); wheel.expire()
    assert (a.fired, b.fired) == (0, 0)
    clock.advance(0.41); wheel.expire()
    assert (a.fired, b.fired) == (1, 0) and len(wheel) == 0
    wheel.rearm(a, 0.0)  # fired entries are armed again, same object
    clock.advance(0.01); wheel.expire()
    assert a.fired == 2


def test_rearm_sooner_only_ever_moves_a_deadline_earlier():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock, tick_s=0.01)
    t = wheel.call_later(10.0, fired.append, "t")
    wheel.rearm_sooner(t, 20.0)  # later: left alone
    assert t.when == pytest.approx(10.0)
    wheel.rearm_sooner(t, 3.0)  # earlier: moved
    assert t.when == pytest.approx(3.0) and len(wheel) == 1
    clock.advance(3.01); wheel.expire()
    assert fired == ["t"] and len(wheel) == 0
    wheel.rearm_sooner(t, 1.0)  # not scheduled: scheduled
    assert t.active and t.when == pytest.approx(4.01)
    with pytest.raises(ValueError):
        wheel.rearm_sooner(t, float("nan"))


@pytest.mark.parametrize("tick_s", [0.0, -0.001, float("nan")])
def test_rejects_bad_tick(tick_s):
    with pytest.raises(ValueError, match="tick_s"):
        TimerWheel(FakeClock(), tick_s=tick_s)


def test_rejects_bad_arguments():
    wheel = TimerWheel(FakeClock())
    with pytest.raises(TypeError, match="not callable"):
        wheel.call_later(1.0, "nope")
    with pytest.raises(ValueError, match="inf"):
        wheel.call_at(float("inf"), print)
    with pytest.raises(ValueError, match="nan"):
        wheel.call_later(float("nan"), print)
    t = wheel.call_later(1.0, print)
    with pytest.raises(ValueError, match="inf"):
        wheel.rearm(t, float("inf"))
    with pytest.raises(ValueError, match="budget 0"):
        wheel.expire(budget=0)
    assert len(wheel) == 1 and t.active


def test_fires_on_its_tick_not_before():
    clock, fired = FakeClock(10.0), []
    wheel = TimerWheel(clock)
    t = wheel.call_later(0.0105, fired.append, "x")
    assert t.active and t.when == pytest.approx(10.011)
    assert wheel.next_deadline() == t.when          # level 0: exact
    clock.advance(0.0104); assert wheel.expire() == 0 and fired == []
    clock.advance(0.0006); assert wheel.expire() == 1 and fired == ["x"]
    assert not t.active and len(wheel) == 0 and wheel.next_deadline() is None


def test_negative_delay_counts_as_zero_and_past_call_at_fires_next_expire():
    clock, fired = FakeClock(5.0), []
    wheel = TimerWheel(clock)
    a = wheel.call_later(-3.0, fired.append, "a")
    assert a.when == pytest.approx(5.0)
    wheel.call_at(1.0, fired.append, "b")           # long past
    assert wheel.next_deadline() <= 1.0
    assert wheel.expire() == 2 and fired == ["b", "a"]  # deadline order


def test_cancel_is_idempotent_and_counted_once():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    t = wheel.call_later(1.0, fired.append, 1)
    u = wheel.call_later(2.0, fired.append, 2)
    wheel.cancel(t); wheel.cancel(t)
    assert not t.active and len(wheel) == 1
    clock.advance(3.0); wheel.expire()
    wheel.cancel(u)                                  # already fired: no-op
    assert fired == [2]
    s = wheel.stats()
    assert isinstance(s, WheelStats)
    assert (s.timers, s.scheduled_total, s.fired_total, s.cancelled_total) == (0, 2, 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timers = 3                                 # type: ignore[misc]


def test_rearm_earlier_later_and_of_fired_or_cancelled_timers():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    t = wheel.call_later(100.0, fired.append, "t")
    wheel.rearm(t, 1.0)                              # earlier: moved
    assert t.when == pytest.approx(1.0) and wheel.next_deadline() <= 1.0
    clock.advance(1.0); assert wheel.expire() == 1 and fired == ["t"]
    assert not t.active
    wheel.rearm(t, 2.0)                              # fired: scheduled again, same object
    assert t.active and len(wheel) == 1
    wheel.cancel(t)
    wheel.rearm(t, 0.5)                              # cancelled: scheduled again
    assert t.active
    clock.advance(0.5); assert wheel.expire() == 1 and fired == ["t", "t"]
    assert wheel.stats().scheduled_total == 3


def test_next_deadline_is_none_iff_empty_and_a_lower_bound():
    clock = FakeClock()
    wheel = TimerWheel(clock)
    assert wheel.next_deadline() is None
    far = wheel.call_later(1000.0, print)
    nd = wheel.next_deadline()
    assert nd is not None and nd <= far.when
    wheel.cancel(far)
    assert wheel.next_deadline() is None


def test_far_future_beyond_top_level_fires_on_time():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)                        # top level ends at 2**32 ms (49.7 days)
    t = wheel.call_later(200 * 86400.0 + 0.0005, fired.append, "far")
    for _ in range(199):
        clock.advance(86400.0); wheel.expire()
        assert wheel.next_deadline() <= t.when
    clock.advance(86400.0); wheel.expire()
    assert fired == []
    clock.advance(0.002); wheel.expire()             # 0.001 s is not exact in floats
    assert fired == ["far"]


def test_skips_empty_stretches():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    clock.advance(300.0); wheel.expire()
    assert wheel._ticks_processed == 0               # nothing scheduled: nothing walked
    wheel.call_later(300.0, fired.append, "late")
    clock.advance(300.0)
    assert wheel.expire() == 1 and fired == ["late"]
    # Walking every tick would be 300,000; one stop per level is what it costs.
    assert wheel._ticks_processed <= 5


# -- budget, errors, re-entrancy ----------------------------------------------------


def test_budget_leaves_the_rest_due_in_order():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    for i in range(10):
        wheel.call_later(0.001 * (10 - i), fired.append, 10 - i)  # scheduled in reverse
    clock.advance(1.0)
    assert wheel.expire(budget=4) == 4
    assert fired == [1, 2, 3, 4] and len(wheel) == 6
    assert wheel.next_deadline() <= clock.now()      # the loop must poll with timeout 0
    assert wheel.expire(budget=4) == 4               # no time passed: still due
    assert wheel.next_deadline() <= clock.now()
    assert wheel.expire(budget=4) == 2
    assert fired == list(range(1, 11)) and wheel.next_deadline() is None


def test_budget_spent_within_one_tick_then_new_timers():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    for i in range(5):
        wheel.call_later(0.5, fired.append, i)
    wheel.call_later(0.7, fired.append, "later")
    clock.advance(1.0)
    assert wheel.expire(budget=2) == 2
    wheel.call_at(0.1, fired.append, "past")          # earlier than everything left
    assert wheel.expire() == 5
    assert fired == [0, 1, "past", 2, 3, 4, "later"]


def test_due_timers_merge_in_deadline_order_after_a_spent_budget():
    clock, fired = FakeClock(10.0), []
    wheel = TimerWheel(clock, tick_s=0.5)
    for when in (1.0, 2.0, 4.0):
        wheel.call_at(when, fired.append, when)      # all long past
    assert wheel.expire(budget=1) == 1 and fired == [1.0]
    wheel.call_at(3.0, fired.append, 3.0)            # between the two left over
    wheel.call_at(5.0, fired.append, 5.0)
    wheel.call_at(0.5, fired.append, 0.5)
    assert wheel.expire() == 5
    assert fired == [1.0, 0.5, 2.0, 3.0, 4.0, 5.0]   # in order within each call


def test_callback_error_goes_to_on_error_and_the_rest_fire():
    clock, fired, errors = FakeClock(), [], []
    wheel = TimerWheel(clock, on_error=lambda t, e: errors.append((t, e)))

    def boom():
        raise KeyError("boom")

    wheel.call_later(0.1, fired.append, 1)
    bad = wheel.call_later(0.2, boom)
    wheel.call_later(0.3, fired.append, 3)
    clock.advance(1.0)
    assert wheel.expire() == 3
    assert fired == [1, 3]
    assert len(errors) == 1 and errors[0][0] is bad and isinstance(errors[0][1], KeyError)


def test_default_on_error_logs_once_with_the_callback(caplog):
    clock = FakeClock()
    wheel = TimerWheel(clock)

    def explode():
        raise RuntimeError("kaput")

    wheel.call_later(0.0, explode)
    clock.advance(0.001)
    with caplog.at_level(logging.ERROR, logger="reactor"):
        assert wheel.expire() == 1
    records = [r for r in caplog.records if r.name == "reactor"]
    assert len(records) == 1
    assert repr(explode) in records[0].getMessage()
    assert records[0].exc_info is not None and "kaput" in caplog.text


def test_delay_zero_from_a_callback_fires_on_the_next_expire():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)

    def again(n):
        fired.append(n)
        wheel.call_later(0.0, again, n + 1)          # would loop forever if run in the same pass

    wheel.call_later(0.0, again, 0)
    clock.advance(1.0)                               # an exact tick: the new deadline is "now"
    assert wheel.expire() == 1 and fired == [0]
    assert wheel.next_deadline() <= clock.now()
    assert wheel.expire() == 1 and fired == [0, 1]
    clock.advance(0.0004)                            # mid-tick
    assert wheel.expire() == 1 and fired == [0, 1, 2]
    clock.advance(0.001)
    assert wheel.expire() == 1 and fired == [0, 1, 2, 3]


def test_delay_zero_from_a_callback_waits_even_if_caught_up_ticks_remain():
    # The callback runs while expire() is still catching up to later ticks;
    # the new timer's deadline is one of them, yet it must wait for the next call.
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    wheel.call_later(0.010, lambda: wheel.call_later(0.0, fired.append, "new"))
    wheel.call_later(0.020, fired.append, "old")
    clock.advance(0.030)
    assert wheel.expire() == 2 and fired == ["old"]
    assert wheel.expire() == 1 and fired == ["old", "new"]


def test_callbacks_may_cancel_and_rearm_pending_timers():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    victim = wheel.call_later(0.003, fired.append, "victim")
    moved = wheel.call_later(0.004, fired.append, "moved")

    def first():
        fired.append("first")
        wheel.cancel(victim)
        wheel.rearm(moved, 1.0)

    wheel.call_later(0.002, first)
    clock.advance(0.010)
    assert wheel.expire() == 1 and fired == ["first"]
    clock.advance(1.0)
    assert wheel.expire() == 1 and fired == ["first", "moved"]


def test_expire_from_a_callback_is_refused():
    clock, errors = FakeClock(), []
    wheel = TimerWheel(clock, on_error=lambda t, e: errors.append(e))
    wheel.call_later(0.0, wheel.expire)
    clock.advance(0.001)
    wheel.expire()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_a_timer_rearming_itself_each_time():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)

    def beat():
        fired.append(clock.now())
        wheel.rearm(hb, 1.0)

    hb = wheel.call_later(1.0, beat)
    for _ in range(5):
        clock.advance(1.0); wheel.expire()
    assert fired == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert hb.active and len(wheel) == 1


def test_lag_percentiles():
    clock = FakeClock()
    wheel = TimerWheel(clock, tick_s=0.5)
    assert wheel.stats().lag_p50_s == 0.0
    for i in range(100):
        wheel.call_at(1.0, lambda: None)
    clock.advance(1.0); wheel.expire()               # on time: lag 0
    for i in range(1, 101):
        wheel.call_at(2.0 + i * 0.5, lambda: None)   # deadlines 2.5 .. 52.0
    clock.advance(100.0); wheel.expire()             # now 101: lags 98.5 .. 49.0
    s = wheel.stats()
    assert s.fired_total == 200 and s.timers == 0
    lags = sorted([0.0] * 100 + [101.0 - (2.0 + i * 0.5) for i in range(1, 101)])
    assert s.lag_p50_s == lags[99]
    assert s.lag_p99_s == lags[197]


def test_lag_ring_keeps_the_last_1024():
    clock = FakeClock()
    wheel = TimerWheel(clock, tick_s=0.5)
    for _ in range(1500):
        wheel.call_at(0.5, lambda: None)
    clock.advance(10.0); wheel.expire()              # 1500 samples of 9.5 s
    for _ in range(1024):
        wheel.call_at(10.5, lambda: None)
    clock.advance(0.5); wheel.expire()               # 1024 samples of 0.0
    assert wheel.stats().lag_p99_s == 0.0


def test_many_timers_and_idle_rearms():
    clock, fired = FakeClock(), []
    wheel = TimerWheel(clock)
    timers = [wheel.call_later(30.0, fired.append, i) for i in range(10_000)]
    for step in range(50):                           # everyone talks every 0.5 s
        clock.advance(0.5)
        for t in timers:
            wheel.rearm(t, 30.0)
        assert wheel.expire() == 0
    clock.advance(29.999); assert wheel.expire() == 0
    clock.advance(0.002); assert wheel.expire() == 10_000
    assert sorted(fired) == list(range(10_000))


def test_timer_repr_and_public_fields():
    wheel = TimerWheel(FakeClock())
    t = wheel.call_later(1.0, print, "a", 2)
    assert isinstance(t, Timer) and t.callback is print and t.args == ("a", 2)
    assert "active" in repr(t) and "print" in repr(t)
    assert not hasattr(t, "__dict__") and not hasattr(wheel, "__dict__")


# -- against a model ------------------------------------------------------------------

delays = st.one_of(
    st.just(0.0),
    st.floats(-1.0, 0.0),
    st.floats(0.0, 0.3),                             # level 0 at 1 ms
    st.floats(0.0, 20.0),                            # level 1
    st.floats(0.0, 2_000.0),                         # level 2
    st.floats(0.0, 100_000.0),                       # level 3
    st.floats(0.0, 1e8),                             # level 4 and beyond (2**32 ms is 4.3e6 s)
    st.sampled_from([0.255, 0.256, 0.257, 16.383, 16.384, 1048.576, 67108.864, 4294967.296]),
)
advances = st.one_of(
    st.just(0.0),
    st.floats(0.0, 0.01),
    st.floats(0.0, 2.0),
    st.floats(0.0, 100.0),
    st.floats(0.0, 1e4),
    st.floats(0.0, 1e7),
    st.sampled_from([0.001, 0.256, 16.384, 1048.576]),
)


class WheelModel(RuleBasedStateMachine):
    """Schedule, cancel, rearm and advance at random; a dict of deadline ticks is the truth."""

    tick_s = 0.001

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.wheel = TimerWheel(self.clock, tick_s=self.tick_s)
        self.timers: list[Timer] = []
        self.live: dict[int, int] = {}   # timer number -> deadline tick
        self.log: list[int] = []

    @initialize(start=st.one_of(st.just(0.0), st.floats(0.0, 1e6)))
    def start_clock(self, start):
        self.clock.advance(start)
        self.wheel = TimerWheel(self.clock, tick_s=self.tick_s)

    def _deadline(self, delay: float) -> int:
        return deadline_tick(self.clock.now() + max(delay, 0.0), self.tick_s)

    @rule(delay=delays)
    def schedule(self, delay):
        n = len(self.timers)
        d = self._deadline(delay)
        self.timers.append(self.wheel.call_later(delay, self.log.append, n))
        self.live[n] = d

    @rule(offset=st.floats(-10.0, 10.0))
    def schedule_at(self, offset):
        n = len(self.timers)
        when = self.clock.now() + offset
        self.timers.append(self.wheel.call_at(when, self.log.append, n))
        self.live[n] = deadline_tick(when, self.tick_s)

    @rule(pick=st.integers(0, 1 << 30))
    def cancel(self, pick):
        if self.timers:
            n = pick % len(self.timers)
            self.wheel.cancel(self.timers[n])
            self.live.pop(n, None)

    @rule(pick=st.integers(0, 1 << 30), delay=delays)
    def rearm(self, pick, delay):
        if self.timers:
            n = pick % len(self.timers)
            self.wheel.rearm(self.timers[n], delay)
            self.live[n] = self._deadline(delay)

    def _expire(self, budget: int) -> tuple[list[int], list[int]]:
        due = sorted(d for d in self.live.values() if d <= now_tick(self.clock.now(), self.tick_s))
        before = len(self.log)
        fired_count = self.wheel.expire(budget)
        fired = self.log[before:]
        assert fired_count == len(fired)
        deadlines = [self.live.pop(n) for n in fired]  # KeyError: fired a dead timer
        assert deadlines == sorted(deadlines), "fired out of deadline order"
        for n in fired:
            assert not self.timers[n].active
        return due, deadlines

    @rule(dt=advances)
    def advance_and_expire(self, dt):
        self.clock.advance(dt)
        due, deadlines = self._expire(10**9)
        assert deadlines == due                         # all due fired, nothing else

    @rule(dt=advances, budget=st.integers(1, 4))
    def advance_and_expire_with_budget(self, dt, budget):
        self.clock.advance(dt)
        due, deadlines = self._expire(budget)
        assert deadlines == due[:budget]                 # the earliest ones
        if len(due) > budget:
            assert self.wheel.next_deadline() <= self.clock.now()

    @invariant()
    def agrees_with_model(self):
        wheel = self.wheel
        assert len(wheel) == len(self.live)
        nd = wheel.next_deadline()
        if not self.live:
            assert nd is None
        else:
            earliest = heapq.nsmallest(1, self.live.values())[0]
            assert nd is not None and nd <= earliest * self.tick_s
        for n, d in self.live.items():
            t = self.timers[n]
            assert t.active and t.when == d * self.tick_s


class CoarseWheelModel(WheelModel):
    tick_s = 0.25


_model_settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWheelModel = WheelModel.TestCase
TestWheelModel.settings = _model_settings
TestCoarseWheelModel = CoarseWheelModel.TestCase
TestCoarseWheelModel.settings = _model_settings


def test_expire_with_the_callers_now_fires_what_is_due_then_and_reads_no_clock():
    """The loop passes the time it read after polling: expire(now=t) must fire exactly the
    timers due at t, whatever the clock says, on both sides of a tick boundary."""
    clock = FakeClock()
    wheel = TimerWheel(clock, tick_s=0.01)
    fired: list[str] = []
    wheel.call_later(0.05, fired.append, "a")
    wheel.call_later(0.30, fired.append, "b")
    assert wheel.expire(10000, 0.0) == 0 and wheel.expire(10000, 0.0499) == 0
    assert fired == []
    assert wheel.expire(10000, 0.05) == 1 and fired == ["a"]   # its tick, to the float
    assert wheel.expire(10000, 0.2999) == 0 and fired == ["a"]
    assert wheel.expire(10000, 5.0) == 1 and fired == ["a", "b"]
    assert clock.now() == 0.0 and wheel.expire(10000, 5.0) == 0  # the clock never moved
    # Rescheduled after a pass: the cached next tick is invalidated, not trusted.
    # (Never early: 5.02 is tick 502, and 502 * 0.01 is a hair above 5.02 in floats.)
    wheel.call_at(5.02, fired.append, "c")
    assert wheel.expire(10000, 5.019) == 0 and wheel.expire(10000, 5.02) == 0
    assert wheel.expire(10000, 5.0200000000000005) == 1 and fired == ["a", "b", "c"]


# -- the grain (rearm_coarse) --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1e6), st.floats(0, 3600), st.integers(1, 500), st.integers(0, 1000))
def test_a_coarse_deadline_is_the_first_grid_tick_at_or_after_the_exact_one(now, delay, grain,
                                                                            phase):
    tick = 0.001
    clock = FakeClock(now)
    wheel = TimerWheel(clock, tick_s=tick, grain_s=grain * tick, phase_s=phase * tick)
    e = Entry()
    wheel.rearm_coarse(e, delay)
    exact = deadline_tick(now + delay, tick)
    assert e._deadline % grain == phase % grain  # on the grid
    assert exact <= e._deadline < exact + grain  # never early, less than a grain late
    plain = Entry()
    wheel.rearm(plain, delay)
    assert plain._deadline == exact  # rearm itself is not rounded


def test_connections_due_within_one_grain_share_one_wakeup():
    clock = FakeClock(50.0)
    wheel = TimerWheel(clock, tick_s=0.001, grain_s=0.01, phase_s=0.004)
    entries = [Entry() for _ in range(100)]
    for i, e in enumerate(entries):
        clock.advance(0.0001)  # armed over 10 ms: exact deadlines on 10 different ticks
        wheel.rearm_coarse(e, 20.0)
    ticks = {e._deadline for e in entries}
    assert len(ticks) == 2 and max(ticks) - min(ticks) == 10  # two grains at most, not ten
    first = wheel.next_deadline()
    assert first == pytest.approx(min(ticks) * 0.001)
    clock.advance(first - 0.0005 - clock.now())
    assert wheel.expire() == 0
    clock.advance(first - clock.now())
    fired = wheel.expire()
    assert fired == sum(e._deadline == min(ticks) for e in entries) > 1
    clock.advance(0.01)
    assert wheel.expire() == 100 - fired and all(e.fired == 1 for e in entries)


def test_a_zero_grain_is_the_tick_and_a_bad_grain_is_refused():
    clock = FakeClock(1.0)
    wheel = TimerWheel(clock, tick_s=0.001)
    e = Entry()
    wheel.rearm_coarse(e, 0.0123)
    assert e._deadline == deadline_tick(1.0123, 0.001)
    for kw in ({"grain_s": -0.01}, {"phase_s": -1.0}, {"grain_s": float("nan")}):
        with pytest.raises(ValueError, match="grain_s"):
            TimerWheel(clock, **kw)
