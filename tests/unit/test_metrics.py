"""render_metrics against the stats document (every figure, read back by prometheus_client's
parser and by a strict reading of the format), the HTTP request-head codec alone, and the
metrics handler on an in-memory socket with a fake clock."""

from __future__ import annotations

import copy
import math
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, Loop
from reactor.errors import CodecError
from reactor.service.metrics import (BadRequest, HeadTooLarge, HttpRequest, HttpRequestCodec,
                                     MetricsHandler, render_metrics)
from reactor.stats import loop_stats
from reactor.testing import Harness
from tests.conftest import run_echo, wait_for
from tests.unit.test_codecs import new_ring, split

# ----------------------------------------------------------------- the oracle

#: Every per-loop figure, written out again here (not read from the module): metric name ->
#: (type, where in the document).
SCALARS = {
    "reactor_connections": ("gauge", "connections"),
    "reactor_accepted_total": ("counter", "accepted"),
    "reactor_bytes_in_total": ("counter", "bytes_in"),
    "reactor_bytes_out_total": ("counter", "bytes_out"),
    "reactor_loop_iterations_total": ("counter", "iterations"),
    "reactor_events_total": ("counter", "events"),
    "reactor_reading_paused_connections": ("gauge", "paused_reading"),
    "reactor_rx_buffered_bytes": ("gauge", "rx_bytes"),
    "reactor_tx_buffered_bytes": ("gauge", "tx_bytes"),
    "reactor_pool_chunk_size_bytes": ("gauge", "pool.chunk_size"),
    "reactor_pool_chunks_in_use": ("gauge", "pool.chunks_in_use"),
    "reactor_pool_chunks_capacity": ("gauge", "pool.chunks_capacity"),
    "reactor_pool_chunks_max": ("gauge", "pool.chunks_max"),
    "reactor_pool_chunks_high_water": ("gauge", "pool.high_water"),
    "reactor_pool_refused_total": ("counter", "pool.refused"),
    "reactor_pool_overflow_chunks_in_use": ("gauge", "pool.overflow_in_use"),
    "reactor_pool_overflow_total": ("counter", "pool.overflow_total"),
    "reactor_pool_grows_total": ("counter", "pool.grows"),
    "reactor_pool_shrinks_total": ("counter", "pool.shrinks"),
    "reactor_buffer_share_bytes": ("gauge", "memory_bound.share_bytes"),
    "reactor_timer_entries": ("gauge", "timers.entries"),
    "reactor_timers_fired_total": ("counter", "timers.expired"),
    "reactor_timers_scheduled_total": ("counter", "timers.scheduled"),
    "reactor_timers_cancelled_total": ("counter", "timers.cancelled"),
    "reactor_broadcast_skipped_total": ("counter", "broadcast_skipped"),
    "reactor_per_ip_rejections_total": ("counter", "per_ip_rejections"),
    "reactor_accept_pauses_total": ("counter", "accept_pauses"),
    "reactor_shutting_down": ("gauge", "shutting_down"),
    "reactor_rss_bytes": ("gauge", "rss_bytes"),
    "reactor_uptime_seconds": ("gauge", "uptime_s"),
    "reactor_start_time_seconds": ("gauge", "start_time_s"),
    "reactor_tls_handshakes_total": ("counter", "tls.handshakes_total"),
    "reactor_proxy_protocol_accepted_total": ("counter", "proxy_protocol.accepted_total"),
}
#: metric name -> (type, label, where the {value: n} table is, values always present).
TABLES = {
    "reactor_closed_total": ("counter", "reason", "closed", [r.value for r in CloseReason]),
    "reactor_paused_connections": ("gauge", "cause", "paused",
                                   ["user", "backpressure", "starved"]),
    "reactor_tls_handshake_failures_total": ("counter", "reason", "tls.handshake_failures", []),
    "reactor_proxy_protocol_rejected_total": ("counter", "reason", "proxy_protocol.rejected", []),
}
LAG = {"0.5": "p50_s", "0.99": "p99_s"}

_MISSING = object()


def lookup(doc: dict, path: str):
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return _MISSING
        doc = doc[key]
    return doc


def expected_samples(doc: dict, base: dict[str, str] | None = None) -> dict:
    """{(sample name, labels): value} that a per-loop document must render to."""
    base = base or {}
    out = {}

    def put(name, labels, value):
        if value is not _MISSING and value is not None:
            out[(name, frozenset({**base, **labels}.items()))] = (
                int(value) if isinstance(value, bool) else value)

    for name, (_typ, path) in SCALARS.items():
        put(name, {}, lookup(doc, path))
    for name, (_typ, label, path, always) in TABLES.items():
        table = lookup(doc, path)
        if table is not _MISSING:
            for key in {*always, *table}:
                put(name, {label: key}, table.get(key, 0))
    for q, key in LAG.items():
        put("reactor_loop_lag_seconds", {"quantile": q}, lookup(doc, f"lag.{key}"))
    return out


def expected_types() -> dict[str, str]:
    """Family name as prometheus_client reports it (counters lose _total) -> type."""
    types = {n: t for n, (t, *_rest) in {**SCALARS, **TABLES}.items()}
    types["reactor_loop_lag_seconds"] = "summary"
    return {(n[:-6] if t == "counter" else n): t for n, t in types.items()}


def parsed(text: str) -> tuple[dict, dict]:
    """(family name -> type, {(sample name, labels): value}) as prometheus_client reads them."""
    families, samples = {}, {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in families, f"two families named {fam.name}"
        families[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"sample {key} twice"
            samples[key] = s.value
    return families, samples


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf'({_NAME})(\{{(?:[a-zA-Z_]\w*="(?:[^"\\\n]|\\[\\"n])*",?)*\}})? (\S+)')


def check_format(text: str) -> None:
    """What the lax parser lets through: every family once, HELP then TYPE, then only its
    own samples; counters named *_total; a summary has no _sum/_count here; no blank line."""
    assert text.endswith("\n")
    seen, current, typ = set(), None, None
    lines = text.split("\n")[:-1]
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.fullmatch(_NAME, name) and name not in seen, line
            assert lines[i + 1].startswith(f"# TYPE {name} "), lines[i + 1]
            seen.add(name)
            current = name
        elif line.startswith("# TYPE "):
            _hash, _type, name, typ = line.split(" ")
            assert name == current and typ in ("counter", "gauge", "summary"), line
            assert (typ == "counter") == name.endswith("_total"), line
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None, f"not a sample line: {line!r}"
            assert m[1] == current, f"{m[1]} under the family {current}"
            float(m[3])


# ---------------------------------------------------------- worker documents


@pytest.fixture
def busy_loop():
    """A loop with three open connections (one holding a partial line), one closed, and
    bytes echoed both ways."""
    lp = Loop()
    lst = lp.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, idle_timeout_s=60)
    clients = [socket.create_connection(lst.address, timeout=5) for _ in range(4)]
    wait_for(lambda: lp.connection_count == 4, step=lambda: lp.run_once(0.01), what="accepts")
    run_echo(lp, clients[0], b"hello\nworld\n")
    clients[1].sendall(b"partial line without its newline")
    wait_for(lambda: loop_stats(lp)["rx_bytes"] > 0, step=lambda: lp.run_once(0.01),
             what="the partial line")
    clients[3].close()
    wait_for(lambda: lp.connection_count == 3, step=lambda: lp.run_once(0.01), what="a close")
    yield lp
    for c in clients:
        c.close()
    lp.close()


def test_every_figure_of_a_worker_document_is_rendered_and_read_back(busy_loop):
    doc = loop_stats(busy_loop)
    assert doc["connections"] == 3 and doc["rx_bytes"] > 0 and doc["bytes_out"] == 12
    assert doc["closed"]["peer_closed"] == 1
    text = render_metrics(doc)
    check_format(text)
    families, samples = parsed(text)
    want = expected_samples(doc)
    assert samples == want
    present = {n for n, _labels in want}
    assert families == {f: t for f, t in expected_types().items()
                        if f in present or f + "_total" in present}
    # The figures named in the brief are all there, with the values of the document.
    assert samples[("reactor_connections", frozenset())] == 3
    assert samples[("reactor_closed_total", frozenset({("reason", "peer_closed")}))] == 1
    assert samples[("reactor_closed_total", frozenset({("reason", "io_error")}))] == 0
    assert samples[("reactor_rx_buffered_bytes", frozenset())] == doc["rx_bytes"] > 0


def test_every_close_reason_and_pause_cause_is_a_series_even_when_missing_or_zero():
    doc = {"closed": {"reset": 2}, "paused": {}}
    _families, samples = parsed(render_metrics(doc))
    reasons = {dict(labels)["reason"]: v for (n, labels), v in samples.items()
               if n == "reactor_closed_total"}
    assert reasons == {**{r.value: 0 for r in CloseReason}, "reset": 2}
    causes = {dict(labels)["cause"]: v for (n, labels), v in samples.items()
              if n == "reactor_paused_connections"}
    assert causes == {"user": 0, "backpressure": 0, "starved": 0}


def test_tls_and_proxy_sections_are_rendered_when_present(busy_loop):
    doc = loop_stats(busy_loop)
    doc["tls"] = {"handshakes_total": 41, "handshake_failures": {"timeout": 3, "bad cert": 1}}
    doc["proxy_protocol"] = {"accepted_total": 7, "rejected": {"malformed": 2}}
    doc["start_time_s"] = 1700000000.25
    text = render_metrics(doc)
    check_format(text)
    families, samples = parsed(text)
    assert samples == expected_samples(doc)
    assert families["reactor_tls_handshake_failures"] == "counter"
    assert samples[("reactor_tls_handshake_failures_total",
                    frozenset({("reason", "bad cert")}))] == 1
    assert samples[("reactor_proxy_protocol_rejected_total",
                    frozenset({("reason", "malformed")}))] == 2
    assert samples[("reactor_start_time_seconds", frozenset())] == 1700000000.25


def test_lag_is_a_summary_of_two_quantiles_without_sum_or_count():
    doc = {"lag": {"p50_s": 0.000125, "p99_s": 0.0421}}
    text = render_metrics(doc)
    assert "reactor_loop_lag_seconds_sum" not in text
    assert "reactor_loop_lag_seconds_count" not in text
    (fam,) = text_string_to_metric_families(text)
    assert fam.type == "summary"
    assert {s.labels["quantile"]: s.value for s in fam.samples} == {"0.5": 0.000125,
                                                                    "0.99": 0.0421}


def test_missing_and_null_figures_are_not_rendered():
    text = render_metrics({"connections": 5, "rss_bytes": None, "pool": {"chunks_in_use": 2}})
    _families, samples = parsed(text)
    assert samples == {("reactor_connections", frozenset()): 5,
                       ("reactor_pool_chunks_in_use", frozenset()): 2}
    assert render_metrics({}) == ""


numbers = st.one_of(st.integers(0, 1 << 70), st.floats(allow_nan=False),
                    st.floats(min_value=0, max_value=1e-3), st.booleans())


@given(st.dictionaries(st.sampled_from(["connections", "uptime_s", "rss_bytes", "bytes_in"]),
                       numbers), numbers, numbers)
def test_values_read_back_exactly(top, p50, p99):
    doc = {**top, "lag": {"p50_s": p50, "p99_s": p99}}
    text = render_metrics(doc)
    check_format(text)
    _families, samples = parsed(text)
    assert samples == expected_samples(doc)
    for key, value in expected_samples(doc).items():  # ints stay ints (no "5.0")
        assert type(samples[key]) is type(value), (key, samples[key], value)


def test_nan_and_infinities_are_spelled_as_the_format_wants():
    text = render_metrics({"uptime_s": math.nan, "lag": {"p50_s": math.inf, "p99_s": -math.inf}})
    assert "reactor_uptime_seconds NaN\n" in text
    assert 'reactor_loop_lag_seconds{quantile="0.5"} +Inf\n' in text
    assert 'reactor_loop_lag_seconds{quantile="0.99"} -Inf\n' in text
    _families, samples = parsed(text)
    assert math.isnan(samples[("reactor_uptime_seconds", frozenset())])


@pytest.mark.parametrize("reason", ['quote"d', "back\\slash", "new\nline", 'all\\"\n\\n',
                                    "ünïcode", "{brace}=,"])
def test_label_values_are_escaped_and_read_back(reason):
    doc = {"tls": {"handshake_failures": {reason: 4}}}
    text = render_metrics(doc)
    check_format(text)
    assert text.count("\n") == 3  # HELP, TYPE, one sample: the newline was escaped
    _families, samples = parsed(text)
    assert samples == {("reactor_tls_handshake_failures_total",
                        frozenset({("reason", reason)})): 4}


def test_the_same_document_renders_the_same_text_whatever_its_key_order(busy_loop):
    doc = loop_stats(busy_loop)
    doc["tls"] = {"handshake_failures": {"b": 1, "a": 2, "c": 3}}
    shuffled = copy.deepcopy(doc)
    shuffled["closed"] = dict(reversed(list(doc["closed"].items())))
    shuffled["tls"]["handshake_failures"] = {"c": 3, "a": 2, "b": 1}
    shuffled = dict(reversed(list(shuffled.items())))
    assert render_metrics(doc) == render_metrics(shuffled) == render_metrics(doc)
    text = render_metrics(doc)
    assert text.index('reason="a"') < text.index('reason="b"') < text.index('reason="c"')


@pytest.mark.parametrize("doc, field", [
    ({"connections": "12"}, "connections"),
    ({"pool": {"refused": [1]}}, "pool.refused"),
    ({"closed": [1, 2]}, "closed"),
    ({"closed": {"reset": "x"}}, "closed.reset"),
    ({"role": "supervisor", "workers": "all"}, "workers"),
    ({"role": "supervisor", "workers": [{"pid": 1}]}, "workers[0]"),
    ({"role": "supervisor", "workers": [{"index": 0, "lag": {"p99_s": "slow"}}]},
     "workers[0].lag.p99_s"),
])
def test_a_figure_that_is_not_a_number_is_a_one_line_value_error(doc, field):
    with pytest.raises(ValueError) as info:
        render_metrics(doc)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_a_document_that_is_not_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match="not list"):
        render_metrics([])  # type: ignore[arg-type]


# ------------------------------------------------------- supervisor documents


def supervisor_doc(worker_docs: dict[int, dict], silent: list[int]) -> dict:
    entries = [{"index": i, "pid": 1000 + i, **d} for i, d in worker_docs.items()]
    entries += [{"index": i, "pid": 1000 + i, "error": "no answer"} for i in silent]
    entries.sort(key=lambda e: e["index"])
    return {"version": 1, "pid": 999, "role": "supervisor", "uptime_s": 12.5, "restarts": 2,
            "connections": 999, "closed": {"reset": 999}, "workers": entries}


def test_a_supervisor_renders_each_answering_worker_once_under_one_family(busy_loop):
    a = loop_stats(busy_loop)
    b = copy.deepcopy(a)
    b.update(connections=7, bytes_in=123456789, rss_bytes=None)
    b["closed"]["reset"] = 5
    b["lag"] = {"p50_s": 0.5, "p99_s": 1.25}
    b["tls"] = {"handshakes_total": 3, "handshake_failures": {"eof": 1}}
    doc = supervisor_doc({0: a, 10: b, 2: copy.deepcopy(a)}, silent=[1])
    text = render_metrics(doc)
    check_format(text)
    families, samples = parsed(text)
    want = {("reactor_workers", frozenset()): 4,
            ("reactor_workers_answered", frozenset()): 3,
            ("reactor_worker_restarts_total", frozenset()): 2,
            ("reactor_supervisor_uptime_seconds", frozenset()): 12.5}
    for index, wdoc in ((0, a), (2, a), (10, b)):
        want.update(expected_samples(wdoc, {"worker": str(index)}))
    assert samples == want
    assert families["reactor_workers"] == families["reactor_workers_answered"] == "gauge"
    assert families["reactor_worker_restarts"] == "counter"
    # The supervisor's own totals are not rendered: Prometheus sums the workers itself.
    assert ("reactor_connections", frozenset()) not in samples
    assert 'worker="1"' not in text  # the silent worker is absent, only counted
    # Workers in index order within each family: 0, 2, 10.
    conns = [line for line in text.splitlines() if line.startswith("reactor_connections{")]
    assert conns == ['reactor_connections{worker="0"} 3', 'reactor_connections{worker="2"} 3',
                     'reactor_connections{worker="10"} 7']


def test_a_supervisor_with_no_worker_answering_says_so():
    text = render_metrics(supervisor_doc({}, silent=[0, 1]))
    check_format(text)
    _families, samples = parsed(text)
    assert samples == {("reactor_workers", frozenset()): 2,
                       ("reactor_workers_answered", frozenset()): 0,
                       ("reactor_worker_restarts_total", frozenset()): 2,
                       ("reactor_supervisor_uptime_seconds", frozenset()): 12.5}


def test_a_repeated_worker_index_is_rendered_once():
    doc = supervisor_doc({}, silent=[])
    doc["workers"] = [{"index": 0, "connections": 1}, {"index": 0, "connections": 2}]
    _families, samples = parsed(render_metrics(doc))
    assert samples[("reactor_connections", frozenset({("worker", "0")}))] == 1
    assert samples[("reactor_workers_answered", frozenset())] == 1


# ----------------------------------------------------------------- the codec

# new_ring (small chunks, so heads span chunks) and split (bytes cut at given points) are the
# codec tests' own: tests/unit/test_codecs.py.


def decode_all(pieces, codec=None):
    """Feed ``pieces`` one at a time, taking heads after each: (requests, error class or
    None, remainder at EOF or None). Checks that the ring never holds more than the cap
    and one piece."""
    codec = codec or HttpRequestCodec()
    ring, reqs = new_ring(), []
    try:
        for piece in pieces:
            ring.write(piece)
            while (req := codec.maybe_take_frame(ring)) is not None:
                reqs.append(req)
            assert len(ring) < codec.max_frame_bytes
    except CodecError as exc:
        return reqs, type(exc), None
    rest = codec.take_remainder(ring)
    assert len(ring) == 0 and ring.chunks_held == 0
    return reqs, None, rest


GET = b"GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: text/plain;q=0.9\r\n\r\n"


def test_a_head_becomes_a_request():
    (req,), err, rest = decode_all([GET])
    assert err is None and rest == b""
    assert req == HttpRequest("GET", "/metrics", "HTTP/1.1",
                              (("host", "localhost:9100"), ("accept", "text/plain;q=0.9")))
    assert req.path == "/metrics" and req.header("HOST") == "localhost:9100"
    assert req.header("x-missing") is None


def test_lf_only_lines_leading_blank_lines_query_and_http10():
    reqs, err, rest = decode_all([b"\r\n\nHEAD /metrics?x=1 HTTP/1.0\nX-A:  b c \t\n\n"])
    assert err is None and rest == b""
    assert reqs == [HttpRequest("HEAD", "/metrics?x=1", "HTTP/1.0", (("x-a", "b c"),))]
    assert reqs[0].path == "/metrics"


heads = st.lists(st.sampled_from([
    GET,
    b"HEAD /metrics HTTP/1.0\r\n\r\n",
    b"POST /other?a=b HTTP/1.1\nHost: h\nContent-Type: x\n\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
]), min_size=1, max_size=6)


@given(heads, st.lists(st.integers(0, 4096), max_size=30), st.binary(max_size=40))
def test_pipelined_heads_cut_anywhere_give_the_same_requests(stream, cuts, tail):
    data = b"".join(stream) + tail.replace(b"\n", b"")  # a partial head after them
    whole = decode_all([data])
    assert whole[1] is None and len(whole[0]) == len(stream)
    assert [r.method for r in whole[0]] == [h.split()[0].decode() for h in stream]
    assert decode_all(split(data, cuts)) == whole
    assert decode_all([bytes([b]) for b in data]) == whole


@given(st.integers(0, 200), st.lists(st.integers(0, 9000), max_size=10))
def test_the_head_limit_is_exact_however_the_bytes_are_cut(extra, cuts):
    limit = 1024
    codec = HttpRequestCodec(limit)
    base = b"GET /metrics HTTP/1.0\r\nX-Pad: \r\n\r\n"
    pad = limit - len(base)
    fits = base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * pad)
    assert len(fits) == limit
    reqs, err, _rest = decode_all(split(fits, cuts), codec)
    assert err is None and reqs[0].header("x-pad") == "p" * pad
    over = fits.replace(b"X-Pad: ", b"X-Pad: " + b"q" * (1 + extra))
    reqs, err, _rest = decode_all(split(over, cuts), codec)
    assert (reqs, err) == ([], HeadTooLarge)


def test_a_head_that_fills_the_limit_without_ending_is_refused_at_once():
    codec = HttpRequestCodec(64)
    ring = new_ring()
    ring.write(b"GET /metrics HTTP/1.0\r\nX: " + b"x" * 37)
    assert len(ring) == 63 and codec.maybe_take_frame(ring) is None
    ring.write(b"x")
    with pytest.raises(HeadTooLarge, match="at least 64 bytes exceeds max_head_bytes 64"):
        codec.maybe_take_frame(ring)


def test_oversize_head_error_carries_the_numbers():
    ring = new_ring()
    ring.write(b"GET /" + b"a" * 9000)
    with pytest.raises(HeadTooLarge) as info:
        HttpRequestCodec().maybe_take_frame(ring)
    assert info.value.reason is CloseReason.FRAME_TOO_LONG
    assert str(info.value) == "request head of at least 9005 bytes exceeds max_head_bytes 8192"


def test_blank_lines_alone_are_held_against_the_limit():
    reqs, err, _rest = decode_all([b"\r\n" * 5000])
    assert (reqs, err) == ([], HeadTooLarge)


@pytest.mark.parametrize("head", [
    b"GET /metrics\r\n\r\n",                                  # no version
    b"GET  /metrics HTTP/1.0\r\n\r\n",                        # two spaces
    b"GET /metrics HTTP/2.0\r\n\r\n",                         # not HTTP/1.x
    b"GET /metrics http/1.0\r\n\r\n",
    b"GET /m\xc3\xa9trics HTTP/1.0\r\n\r\n",                  # not ASCII in the target
    b"G(T /metrics HTTP/1.0\r\n\r\n",                         # not a token
    b"GET /metrics HTTP/1.1\r\n\r\n",                         # 1.1 without Host
    b"GET /metrics HTTP/1.0\r\nNoColon\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nHost : x\r\n\r\n",             # space before the colon
    b"GET /metrics HTTP/1.0\r\nA: b\r\n folded\r\n\r\n",      # obs-fold
    b"GET /metrics HTTP/1.0\r\nA: b\x00c\r\n\r\n",            # NUL in a value
    b"GET /metrics HTTP/1.0\r\nA: b\rc\r\n\r\n",              # bare CR
    b"GET /metrics HTTP/1.0\r\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",      # a TLS hello, roughly
])
def test_malformed_heads_are_bad_requests(head):
    reqs, err, _rest = decode_all([head])
    assert (reqs, err) == ([], BadRequest)
    assert BadRequest.reason is CloseReason.PROTOCOL_ERROR


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
def test_garbage_gives_requests_or_a_codec_error_and_nothing_else(data, cuts):
    reqs, err, rest = decode_all(split(data, cuts))
    assert all(isinstance(r, HttpRequest) for r in reqs)
    assert err in (None, BadRequest, HeadTooLarge)
    if err is None:  # what is left at EOF holds no complete head
        assert re.search(rb"\n\r?\n", rest.lstrip(b"\r\n")) is None


def test_a_partial_head_is_the_remainder_at_eof():
    reqs, err, rest = decode_all([GET + b"GET /metr"])
    assert len(reqs) == 1 and err is None and rest == b"GET /metr"


def test_a_tiny_head_limit_is_refused():
    with pytest.raises(ValueError, match="max_head_bytes 8 must be at least 16"):
        HttpRequestCodec(8)


# ---------------------------------------------- the handler, on an in-memory socket


class Deferred:
    """A provider that answers only when the test says so (as the supervisor's gather)."""

    def __init__(self) -> None:
        self.replies: list = []

    def __call__(self, reply) -> None:
        self.replies.append(reply)


def harness(provide, **opts) -> Harness:
    opts = {"idle_timeout_s": 5.0, "frame_timeout_s": 5.0, "linger_s": 0.5, **opts}
    return Harness(MetricsHandler(provide), HttpRequestCodec(), **opts)


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:80]
    status, *fields = head.decode("ascii").split("\r\n")
    return status, dict(f.split(": ", 1) for f in fields), body


def test_the_answer_waits_for_the_provider_and_later_bytes_are_not_read():
    provide = Deferred()
    with harness(provide) as h:
        h.feed(GET + b"GET /metrics HTTP/1.0\r\n\r\nGARBAGE\n\n")
        assert len(provide.replies) == 1 and h.written == b"" and not h.closed
        provide.replies[0]({"connections": 42})
        h.run()  # the reply came from outside a loop turn here: let the loop flush it
        status, fields, body = split_response(h.written)
        assert status == "HTTP/1.1 200 OK"
        assert fields["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert fields["Connection"] == "close" and int(fields["Content-Length"]) == len(body)
        assert body == render_metrics({"connections": 42}).encode()
        assert h.fin_sent and len(provide.replies) == 1  # one request a connection


def test_a_request_and_the_peers_fin_in_one_read_still_get_the_late_answer():
    provide = Deferred()
    with harness(provide) as h:
        h.sock.inbound += GET
        h.feed_eof()
        assert len(provide.replies) == 1 and not h.closed
        provide.replies[0]({"connections": 1})
        h.run()
        assert h.written.startswith(b"HTTP/1.1 200 OK\r\n") and h.fin_sent


def test_a_provider_slower_than_the_idle_timeout_loses_the_client_and_writes_nothing():
    provide = Deferred()
    with harness(provide) as h:
        h.feed(GET)
        h.advance(5.1)
        assert h.close_reason is CloseReason.IDLE_TIMEOUT
        provide.replies[0]({"connections": 1})
        h.run()
        assert h.written == b""


def test_a_silent_client_is_closed_by_the_idle_timeout_without_a_byte():
    with harness(Deferred()) as h:
        h.advance(4.9)
        assert not h.closed
        h.advance(0.2)
        assert h.close_reason is CloseReason.IDLE_TIMEOUT and h.written == b""


def test_a_trickling_head_gets_408_when_it_is_older_than_the_timeout():
    with harness(Deferred()) as h:
        for ch in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
            h.feed(bytes([ch]))
            h.advance(0.1)  # each byte keeps the idle timer away
        h.advance(2.0)
        status, _fields, _body = split_response(h.written)
        assert status == "HTTP/1.1 408 Request Timeout"
        assert h.close_reason is CloseReason.FRAME_TIMEOUT


@pytest.mark.parametrize("request_bytes, status, allow", [
    (b"GET /nope HTTP/1.0\r\n\r\n", "HTTP/1.1 404 Not Found", None),
    (b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 405 Method Not Allowed",
     "GET, HEAD"),
    (b"BREW /metrics HTTP/1.0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed", "GET, HEAD"),
    (b"GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request", None),
    (b"x" * 9000, "HTTP/1.1 400 Bad Request", None),
])
def test_refusals_answer_and_close_without_asking_the_provider(request_bytes, status, allow):
    provide = Deferred()
    with harness(provide) as h:
        h.feed(request_bytes)
        got, fields, body = split_response(h.written)
        assert got == status and fields.get("Allow") == allow
        assert int(fields["Content-Length"]) == len(body) > 0 and h.fin_sent
        assert provide.replies == []


def test_head_gets_the_length_of_the_body_it_does_not_get():
    with harness(lambda reply: reply({"connections": 3})) as h:
        h.feed(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        status, fields, body = split_response(h.written)
        assert status == "HTTP/1.1 200 OK" and body == b""
        assert int(fields["Content-Length"]) == len(render_metrics({"connections": 3}))


def test_a_document_that_cannot_be_rendered_is_500_not_a_traceback():
    with harness(lambda reply: reply({"connections": "many"})) as h:
        h.feed(GET)
        status, _fields, _body = split_response(h.written)
        assert status == "HTTP/1.1 500 Internal Server Error"
        assert h.close_reason is CloseReason.LOCAL_CLOSE


def test_a_provider_that_raises_is_500_and_logged(caplog):
    def broken(reply):
        raise RuntimeError("worker table corrupt")

    with harness(broken) as h:
        h.feed(GET)
        status, _fields, _body = split_response(h.written)
        assert status == "HTTP/1.1 500 Internal Server Error" and h.fin_sent
    assert "the stats provider failed" in caplog.text and "worker table corrupt" in caplog.text
