"""fd-stats' rendering of pool and pause figures, from hand-made stats documents.

One document carries the fields issue 10 adds to the reactor's stats (``pool``, ``paused``,
``memory_bound``), one is today's (only ``chunks`` and ``paused_reading``): both must render,
the missing figures as ``-``. The rows are checked to the character.
"""

from __future__ import annotations

import copy
import os
import time

import pytest

from reactor.service import fdstats
from reactor.service.fdstats import Watcher, pool_view, render

OLD_DOC = {
    "version": 1, "pid": 4242, "role": "worker", "selector": "epoll-et", "uptime_s": 75.0,
    "connections": 3000, "accepted": 3100, "closed": {"peer_closed": 100}, "closed_total": 100,
    "paused_reading": 2990, "rx_bytes": 0, "tx_bytes": 0, "broadcast_skipped": 0,
    "chunks": {"chunk_size": 16384, "chunks_total": 4096, "chunks_in_use": 4096,
               "chunks_free": 0, "high_water": 4096, "exhausted_total": 512,
               "overflow_in_use": 3, "overflow_total": 40},
    "timers": {"entries": 3001, "expired": 0}, "lag": {"p50_s": 0.0, "p99_s": 0.002},
    "listeners": [], "top": [],
}
NEW_DOC = {
    **copy.deepcopy(OLD_DOC),
    "pool": {"chunk_size": 16384, "chunks_capacity": 6144, "chunks_max": 8192,
             "chunks_in_use": 6100, "chunks_free": 44, "high_water": 8000, "grows": 5,
             "shrinks": 2, "refused": 1234, "refused_per_s": 37.5, "overflow_in_use": 3,
             "overflow_total": 40, "capacity_bytes": 6144 * 16384, "max_bytes": 8192 * 16384},
    "paused": {"user": 1, "backpressure": 12, "starved": 2980},
    "memory_bound": {"share_bytes": 44739, "per_connection_bytes": 131072,
                     "total_bytes": 128 << 20},
}
RATES = {"accepts_per_s": 0.0, "closes_per_s": 0.0, "bytes_in_per_s": 0.0,
         "bytes_out_per_s": 0.0, "events_per_s": 0.0, "iterations_per_s": 0.0}


def sample_of(doc: dict, rates: dict) -> dict:
    return {
        "version": 1, "pid": 4242, "time": 1_700_000_000.0, "stats_socket": "/tmp/s.sock",
        "process": {
            "pid": 4242, "name": "line-echo", "cmdline": "line-echo", "time": 1_700_000_000.0,
            "fds": {"total": 3010, "tcp": 3001, "tcp6": 0, "udp": 0, "udp6": 0, "unix": 3,
                    "pipe": 1, "file": 2, "other": 3},
            "tcp_states": {"ESTABLISHED": 3000, "LISTEN": 1}, "unowned": {},
            "listening": ["127.0.0.1:9000"],
            "rlimit_nofile": {"soft": 20000, "hard": 20000, "used": 3010, "headroom": 16990,
                              "used_pct": 15.1, "warning": False},
            "rss_bytes": 50 << 20, "rss_growth_bytes": 0, "cpu_percent": 0.4,
            "cpu_interval_s": 0.25, "threads": 1,
        },
        "reactor": doc, "rates": rates,
    }


def rows(text: str) -> dict[str, str]:
    """label -> value of each row of the human view (labels are unique where we look)."""
    lines = text.splitlines()
    start = lines[0].index("pid 4242")        # labels are padded to one width, then two spaces
    return {line[:start].strip(): line[start:] for line in lines if line[:start].strip()}


def test_new_document_pool_paused_and_memory_rows():
    out = rows(render(sample_of(NEW_DOC, {**RATES, "pool_refused_per_s": 41.2})))
    assert out["pool"] == ("capacity 6144 / 8192 chunks of 16384 B (96.0 MiB / 128.0 MiB)  "
                           "in use 6100  free 44  high water 8000  grows 5  shrinks 2  "
                           "refused 1234  refused/s 41.2  overflow 3 (40 total)")
    assert out["paused"] == ("user 1  backpressure 12  starved 2980  "
                             "(reading paused 2990 of 3000 connections)")
    assert out["memory"] == ("share 43.7 KiB per connection now  "
                             "bound 128.0 KiB per connection, 128.0 MiB total")
    assert out["buffers"] == "rx 0 B  tx 0 B  broadcast skipped 0"
    assert out["process"] == "rss 50.0 MiB (+0 B since first sample)  cpu 0.4 % over 0.25 s  threads 1"


def test_old_document_renders_what_it_has_and_dashes_the_rest():
    out = rows(render(sample_of(OLD_DOC, RATES)))           # rates without pool_refused_per_s
    assert out["pool"] == ("capacity 4096 / - chunks of 16384 B (- / -)  in use 4096  free 0  "
                           "high water 4096  grows -  shrinks -  refused 512  refused/s -  "
                           "overflow 3 (40 total)")
    assert out["paused"] == ("user -  backpressure -  starved -  "
                             "(reading paused 2990 of 3000 connections)")
    assert out["memory"] == "share - per connection now  bound - per connection, - total"


def test_partial_and_empty_documents_render_dashes():
    partial = {**copy.deepcopy(OLD_DOC), "pool": {"chunks_in_use": 7}, "paused": {"starved": 4}}
    del partial["chunks"], partial["paused_reading"]
    out = rows(render(sample_of(partial, RATES)))
    assert out["pool"] == ("capacity - / - chunks of - B (- / -)  in use 7  free -  high water -  "
                           "grows -  shrinks -  refused -  refused/s -  overflow - (- total)")
    assert out["paused"] == "user -  backpressure -  starved 4  (reading paused - of 3000 connections)"
    assert pool_view({}) == dict.fromkeys(fdstats.POOL_KEYS)


def test_pool_view_prefers_pool_and_maps_the_old_chunks():
    assert pool_view(NEW_DOC) == NEW_DOC["pool"]
    old = pool_view(OLD_DOC)
    assert (old["chunks_capacity"], old["refused"], old["chunks_in_use"]) == (4096, 512, 4096)
    assert old["chunks_max"] is old["grows"] is old["refused_per_s"] is old["max_bytes"] is None


def test_supervisor_worker_rows_show_each_workers_pool_and_pauses():
    w0 = {**copy.deepcopy(NEW_DOC), "index": 0, "pid": 11, "bytes_in": 0, "bytes_out": 0,
          "rss_bytes": 30 << 20}
    w1 = {**copy.deepcopy(OLD_DOC), "index": 1, "pid": 12, "bytes_in": 0, "bytes_out": 0,
          "closed": {"peer_closed": 60, "idle_timeout": 40, "slow_consumer": 0}}
    doc = {**copy.deepcopy(NEW_DOC), "role": "supervisor",
           "workers": [w0, w1, {"index": 2, "pid": 13, "error": "no answer"}]}
    out = rows(render(sample_of(doc, RATES)))
    assert out["worker 0"] == ("pid 11  connections 3000  accepted 3100  closed 100 "
                               "(peer_closed 100)  in 0 B  out 0 B  lag p99 2.0 ms  pool 6100 in "
                               "use of 6144  refused 1234  paused 2990  rss 30.0 MiB")
    # An older worker's document has no RSS: a dash, not a zero.
    assert out["worker 1"] == ("pid 12  connections 3000  accepted 3100  closed 100 "
                               "(peer_closed 60, idle_timeout 40)  in 0 B  out 0 B  lag p99 2.0 ms  "
                               "pool 4096 in use of 4096  refused 512  paused 2990  rss -")
    assert out["worker 2"] == "pid 13: no answer"


def test_fleet_json_has_one_entry_per_worker_and_the_services_total():
    w0 = {**copy.deepcopy(NEW_DOC), "index": 0, "pid": 11, "bytes_in": 5, "bytes_out": 7,
          "rss_bytes": 30 << 20}
    doc = {**copy.deepcopy(NEW_DOC), "role": "supervisor", "connections": 3000,
           "accepted": 3100, "bytes_in": 5, "bytes_out": 7,
           "workers": [w0, {"index": 1, "pid": 12, "error": "no answer"}]}
    workers = fdstats.fleet_view(doc)
    assert workers[0] == {
        "index": 0, "pid": 11, "connections": 3000, "accepted": 3100, "closed_total": 100,
        "closed": {"peer_closed": 100}, "bytes_in": 5, "bytes_out": 7, "lag_p50_s": 0.0,
        "lag_p99_s": 0.002, "timers": 3001, "pool_in_use": 6100, "pool_capacity": 6144,
        "pool_refused": 1234, "paused_reading": 2990, "rss_bytes": 30 << 20}
    assert workers[1] == {"index": 1, "pid": 12, "error": "no answer"}
    proc = sample_of(doc, RATES)["process"]
    total = fdstats.fleet_total(proc, doc, workers)
    assert total == {"workers": 2, "workers_answered": 1, "connections": 3000,
                     "accepted": 3100, "closed_total": 100, "bytes_in": 5, "bytes_out": 7,
                     "rss_bytes": (50 << 20) + (30 << 20)}
    sample = {**sample_of(doc, RATES), "workers": workers, "total": total}
    assert rows(render(sample))["total"] == (
        "workers 1 of 2 answered  connections 3000  accepted 3100  closed 100  in 5 B  out 7 B  "
        "rss 80.0 MiB (supervisor + workers)")
    # A single loop: no worker rows, its own figures as the total; no document, no total.
    assert fdstats.fleet_view(NEW_DOC) == []
    assert fdstats.fleet_total(proc, NEW_DOC, [])["rss_bytes"] == 50 << 20
    assert fdstats.fleet_total(proc, None, []) is None


@pytest.mark.parametrize("doc, counter", [(NEW_DOC, ("pool", "refused")),
                                          (OLD_DOC, ("chunks", "exhausted_total"))])
def test_watcher_refused_per_s_between_samples(monkeypatch, doc, counter):
    """First sample: the reactor's own rate (none in an old document); then the counter's
    change over the time between the two samples."""
    first = {**copy.deepcopy(doc), "pid": os.getpid()}
    second = copy.deepcopy(first)
    second[counter[0]][counter[1]] += 300
    served = [first, second]
    monkeypatch.setattr(fdstats, "read_stats", lambda path: served.pop(0))
    w = Watcher(os.getpid(), "/nonexistent/stats.sock", cpu_interval_s=0)
    t0 = time.monotonic()
    s1 = w.sample()
    t1 = time.monotonic()
    assert s1["rates"]["pool_refused_per_s"] == first.get("pool", {}).get("refused_per_s")
    time.sleep(0.1)     # a span long enough to measure; the bounds below are what it was
    t2 = time.monotonic()
    s2 = w.sample()
    t3 = time.monotonic()
    rate = s2["rates"]["pool_refused_per_s"]
    assert 300 / (t3 - t0) - 0.1 <= rate <= 300 / (t2 - t1) + 0.1
    assert s2["reactor"] is second          # --json passes the document through as served
