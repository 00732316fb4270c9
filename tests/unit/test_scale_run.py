"""tools/scale_run.py's pure parts: CPU ticks from /proc, the hold's figures, the verdict."""

from __future__ import annotations

import os
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from scalelib import netns  # noqa: E402
from scalelib.scenario import (Sample, cpu_ticks, hold_summary, read_cpu_ticks,  # noqa: E402
                               verdict, worker_lags)


def test_cpu_ticks_reads_utime_and_stime_past_a_name_with_spaces_and_parens():
    line = "4242 (line echo) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 1 0\n"
    assert cpu_ticks(line) == 123 + 45
    assert read_cpu_ticks(os.getpid()) is not None
    assert read_cpu_ticks(4_000_000) is None


def _s(t, conns, cpu, lag=0.001, wall=0.5, out=0, seen=None):
    return Sample(t=t, wall_s=wall, connections=conns, workers_answered=2, lag_p99_max_s=lag,
                  bytes_out=out, cpu=cpu, lag_p99_median_s=lag / 4, lag_p99_fdstats_max_s=seen)


def test_hold_summary_uses_only_the_samples_with_every_connection_held():
    samples = [
        _s(0.0, 10, {1: 0, 2: 0}, lag=0.9),             # the ramp: not the hold
        _s(1.0, 100, {1: 100, 2: 200}, wall=0.4, out=1000),
        _s(3.0, 100, {1: 120, 2: 260}, lag=0.004, wall=1.2, out=5000, seen=0.0625),
        _s(5.0, 100, {1: 140, 2: 320, 3: 999}, wall=0.6, out=9000),
        _s(6.0, 0, {1: 500, 2: 900}, lag=2.0),          # closing: not the hold
    ]
    h = hold_summary(samples, 100, tck=100, settle_s=2.0)
    assert h["hold_samples"] == 3 and h["hold_observed_s"] == 4.0
    assert h["lag_p99_max_ms"] == 4.0 and h["lag_p99_ms"] == [1.0, 4.0, 1.0]
    assert h["lag_p99_settled_max_ms"] == 4.0  # the samples at 3.0 and 5.0, not 1.0
    assert h["lag_p99_median_worker_ms"] == [0.2, 1.0, 0.2]  # rounded to 0.1 ms
    assert h["lag_p99_fdstats_ms"] == [None, 62.5, None]  # fd-stats' own view, kept apart
    assert hold_summary(samples, 100, settle_s=10.0)["lag_p99_settled_max_ms"] is None
    early = [_s(1.0, 100, {}, lag=0.5), _s(4.0, 100, {}, lag=0.02)]
    assert hold_summary(early, 100, settle_s=3.0)["lag_p99_settled_max_ms"] == 20.0
    assert h["fdstats_wall_max_s"] == 1.2 and h["fdstats_wall_median_s"] == 0.6
    # worker 1: 40 ticks over 4 s at 100 ticks/s = 10 %; worker 2: 120 ticks = 30 %; pid 3
    # was not there at the first hold sample, so it is left out.
    assert h["worker_cpu_pct_mean"] == 20.0 and h["worker_cpu_pct_max"] == 30.0
    assert h["bytes_out_per_s"] == 2000.0
    assert hold_summary(samples[:1], 100) == {"hold_samples": 0}


def test_verdict_every_connection_or_exactly_the_killed_workers():
    scale = {"conns": 1000, "verified": 1000}
    assert verdict(scale, None) == (True, "verified 1,000 of 1,000")
    assert verdict({"conns": 1000, "verified": 999}, None)[0] is False
    assert verdict(None, None)[0] is False
    killed = {"killed_connections": 300, "serving_s": 0.2}
    assert verdict({"conns": 1000, "verified": 700}, killed) == (
        True, "lost 300, the killed worker held 300")
    assert verdict({"conns": 1000, "verified": 699}, killed)[0] is False  # one more lost
    assert verdict({"conns": 1000, "verified": 700},
                   {"killed_connections": 300})[0] is False            # never served again
    assert verdict(scale, {})[0] is False                              # nobody was killed


def test_the_namespace_hash_has_a_bucket_per_socket_within_the_kernels_bounds():
    assert netns.ehash_entries(1) == 1 << 16                     # the floor
    assert netns.ehash_entries(100_000) == 1 << 18               # 201,024 sockets
    assert netns.ehash_entries(1_000_000) == 1 << 21             # 2,001,024 sockets
    assert netns.ehash_entries(10_000_000) == 1 << 24            # the kernel's cap
    for n in (1, 5_000, 32_256, 32_257, 700_000):
        e = netns.ehash_entries(n)
        assert e & (e - 1) == 0 and (e >= 2 * n + 1024 or e == 1 << 24)


def test_worker_lags_reads_a_supervisors_workers_or_a_single_loop():
    sup = {"role": "supervisor", "lag": {"p99_s": 9.0}, "workers": [
        {"index": 0, "lag": {"p99_s": 0.03}}, {"index": 1, "error": "no answer"},
        {"index": 2, "lag": {"p99_s": 0.002}}, {"index": 3, "lag": {"p99_s": None}}]}
    assert worker_lags(sup) == [0.0, 0.002, 0.03]  # the aggregate's 9.0 is not a worker
    assert worker_lags({"role": "worker", "lag": {"p99_s": 0.004}}) == [0.004]
