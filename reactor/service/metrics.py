"""The stats document as Prometheus metrics, served over HTTP on the reactor's own loop.

``render_metrics(doc)`` turns a stats document (``reactor.stats.loop_stats``, or a
supervisor's with one entry per worker) into the text exposition format 0.0.4.
``HttpRequestCodec`` frames HTTP/1.x request heads, sans-IO; ``serve_metrics`` answers
``GET /metrics`` with them, one request per connection, with no thread and no framework.
This module reads the document; it adds nothing to it and never touches the core's privates.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import CloseReason, CodecError, FrameTimeout, FrameTooLong
from ..protocols import Handler, Transport
from ..stats import loop_stats

if TYPE_CHECKING:  # pragma: no cover
    from ..listener import Listener
    from ..loop import Loop
    from ..ring import RingBuffer

__all__ = ["CONTENT_TYPE", "BadRequest", "HeadTooLarge", "HttpRequest", "HttpRequestCodec",
           "MetricsHandler", "render_metrics", "serve_metrics"]

log = logging.getLogger("reactor")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ------------------------------------------------------------------ exposition

Labels = tuple[tuple[str, str], ...]
_C, _G = "counter", "gauge"
#: Label values always present (0 when the document lacks them), per table: every reason
#: is a series from the start, so ``rate()`` sees its first increase.
_ALWAYS = {"closed": tuple(r.value for r in CloseReason),
           "paused": ("user", "backpressure", "starved")}
_QUANTILES = (("0.5", "p50_s"), ("0.99", "p99_s"))
#: Per loop (per worker under a supervisor): name, type, where in the document, help.
#: ``a.b`` is ``doc["a"]["b"]``; ``a{label}`` is one sample per key of the table ``doc["a"]``.
#: Figures missing from a document are not rendered: an older reactor's, or one without
#: TLS, shows what it has.
_FAMILIES = (
    ("reactor_connections", _G, "connections", "Open connections (readers of stats not counted)."),
    ("reactor_accepted_total", _C, "accepted", "Connections accepted."),
    ("reactor_closed_total", _C, "closed{reason}", "Connections closed, by close reason."),
    ("reactor_bytes_in_total", _C, "bytes_in", "Bytes received from peers."),
    ("reactor_bytes_out_total", _C, "bytes_out", "Bytes sent to peers."),
    ("reactor_loop_iterations_total", _C, "iterations", "Loop iterations."),
    ("reactor_events_total", _C, "events", "Readiness events dispatched."),
    ("reactor_reading_paused_connections", _G, "paused_reading",
     "Open connections not reading, each counted once."),
    ("reactor_paused_connections", _G, "paused{cause}",
     "Open connections not reading, by cause (one may have several)."),
    ("reactor_rx_buffered_bytes", _G, "rx_bytes", "Bytes in receive buffers (partial messages)."),
    ("reactor_tx_buffered_bytes", _G, "tx_bytes", "Bytes in send buffers (unsent replies)."),
    ("reactor_pool_chunk_size_bytes", _G, "pool.chunk_size", "Size of one buffer pool chunk."),
    ("reactor_pool_chunks_in_use", _G, "pool.chunks_in_use", "Pool chunks lent to buffers."),
    ("reactor_pool_chunks_capacity", _G, "pool.chunks_capacity", "Pool chunks mapped now."),
    ("reactor_pool_chunks_max", _G, "pool.chunks_max", "Most chunks the pool may map."),
    ("reactor_pool_chunks_high_water", _G, "pool.high_water", "Most chunks ever lent at once."),
    ("reactor_pool_refused_total", _C, "pool.refused", "Chunk requests the pool refused."),
    ("reactor_pool_overflow_chunks_in_use", _G, "pool.overflow_in_use",
     "Heap chunks lent to sends while the pool was empty."),
    ("reactor_pool_overflow_total", _C, "pool.overflow_total", "Heap chunks lent in all."),
    ("reactor_pool_grows_total", _C, "pool.grows", "Times the pool mapped more memory."),
    ("reactor_pool_shrinks_total", _C, "pool.shrinks", "Times the pool gave memory back."),
    ("reactor_buffer_share_bytes", _G, "memory_bound.share_bytes",
     "Fair share of buffer memory per connection now."),
    ("reactor_timer_entries", _G, "timers.entries", "Live timers (idle, heartbeat, application)."),
    ("reactor_timers_fired_total", _C, "timers.expired", "Timers fired."),
    ("reactor_timers_scheduled_total", _C, "timers.scheduled", "Timers scheduled."),
    ("reactor_timers_cancelled_total", _C, "timers.cancelled", "Timers cancelled."),
    # A summary with quantiles only: the document has the lag's quantiles over the last
    # 1,024 timer firings (what a summary's quantiles are: a sliding window) but no
    # lifetime sum or count, and inventing those would lie. _sum and _count may be left
    # out (OpenMetrics says so; Prometheus's 0.0.4 parser takes a summary without).
    ("reactor_loop_lag_seconds", "summary", "lag{quantile}",
     "How late timers fire, over the last 1024 firings."),
    ("reactor_broadcast_skipped_total", _C, "broadcast_skipped", "Broadcasts skipped (laggards)."),
    ("reactor_per_ip_rejections_total", _C, "per_ip_rejections",
     "Connections refused for holding max_conns_per_ip."),
    ("reactor_accept_pauses_total", _C, "accept_pauses", "Pauses of accepting for the rate."),
    ("reactor_shutting_down", _G, "shutting_down", "1 while the loop drains for shutdown."),
    ("reactor_rss_bytes", _G, "rss_bytes", "Resident set of the process."),
    ("reactor_uptime_seconds", _G, "uptime_s", "Seconds since the loop started."),
    ("reactor_start_time_seconds", _G, "start_time_s", "When the process started (unix time)."),
    ("reactor_tls_handshakes_total", _C, "tls.handshakes_total", "TLS handshakes completed."),
    ("reactor_tls_handshake_failures_total", _C, "tls.handshake_failures{reason}",
     "TLS handshakes failed, by reason."),
    ("reactor_proxy_protocol_accepted_total", _C, "proxy_protocol.accepted_total",
     "PROXY protocol headers accepted."),
    ("reactor_proxy_protocol_rejected_total", _C, "proxy_protocol.rejected{reason}",
     "PROXY protocol headers refused, by reason."),
)


def _samples(where: str, doc: dict[str, Any], prefix: str
             ) -> Iterator[tuple[Labels, Any, str]]:
    """The (labels, raw value, field name) of one family in one loop's document."""
    path, _brace, label = where.partition("{")
    value: Any = doc
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return
        value = value[key]
    at = prefix + path
    if not label:
        yield (), value, at
        return
    if not isinstance(value, dict):
        raise ValueError(f"stats document field {at} is {value!r:.40}, not an object")
    label = label[:-1]
    if label == "quantile":
        pairs = [(q, key) for q, key in _QUANTILES if key in value]
    else:
        always = _ALWAYS.get(path, ())
        pairs = [(str(k), k) for k in (*always, *sorted((k for k in value if k not in always),
                                                        key=str))]
    for name, key in pairs:
        yield ((label, name),), value.get(key, 0), f"{at}.{key}"


def _number(value: Any, where: str) -> str:
    """The sample value as text the parser reads back exactly: ints as ints, floats as repr."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    raise ValueError(f"stats document field {where} is {value!r:.40}, not a number")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _emit(out: list[str], name: str, typ: str, help_text: str,
          samples: list[tuple[Labels, str]]) -> None:
    if not samples:  # a family with no sample is left out: nothing to say
        return
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {typ}\n")
    for labels, text in samples:
        if labels:
            inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            out.append(f"{name}{{{inner}}} {text}\n")
        else:
            out.append(f"{name} {text}\n")


def render_metrics(doc: dict[str, Any]) -> str:
    """The Prometheus text exposition (format 0.0.4) of a stats document.

    A worker's document gives each family one sample (or one per label value); a
    supervisor's (``"role": "supervisor"``) gives ``reactor_workers``,
    ``reactor_workers_answered`` and, per family, one sample per answering worker
    labelled ``worker="<index>"`` (a worker entry with ``"error"`` is counted as not
    answered and left out). Figures missing from the document are not rendered;
    ``None`` (``rss_bytes`` off Linux) neither. The order is fixed: same document,
    same text. Raises ``ValueError`` (one line, naming the field) for a figure that
    is not a number, and ``TypeError`` if ``doc`` is not a dict.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a stats document is a dict, not {type(doc).__name__}")
    out: list[str] = []
    sources: list[tuple[Labels, dict[str, Any], str]]
    if doc.get("role") == "supervisor":
        entries = doc.get("workers") or []
        if not isinstance(entries, list):
            raise ValueError(f"stats document field workers is {entries!r:.40}, not a list")
        sources, seen = [], set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "index" not in entry:
                raise ValueError(f"stats document field workers[{i}] is not a worker entry")
            index = str(entry["index"])
            if "error" not in entry and index not in seen:  # a repeated index would repeat series
                seen.add(index)
                sources.append(((("worker", index),), entry, f"workers[{i}]."))
        sources.sort(key=lambda s: (len(s[0][0][1]), s[0][0][1]))  # 2 before 10
        _emit(out, "reactor_workers", _G, "Workers the supervisor runs.",
              [((), str(len(entries)))])
        _emit(out, "reactor_workers_answered", _G, "Workers that answered this scrape.",
              [((), str(len(sources)))])
        for name, key, typ, text in (
                ("reactor_worker_restarts_total", "restarts", _C, "Workers restarted."),
                ("reactor_supervisor_uptime_seconds", "uptime_s", _G,
                 "Seconds since the supervisor started.")):
            if doc.get(key) is not None:
                _emit(out, name, typ, text, [((), _number(doc[key], key))])
    else:
        sources = [((), doc, "")]
    for name, typ, where, text in _FAMILIES:
        samples = [(base + labels, _number(value, at))
                   for base, source, prefix in sources
                   for labels, value, at in _samples(where, source, prefix)
                   if value is not None]
        _emit(out, name, typ, text, samples)
    return "".join(out)


# ------------------------------------------------------------- request heads

class BadRequest(CodecError):
    """A request head that is not HTTP/1.x as this server reads it; answered with 400."""


class HeadTooLarge(FrameTooLong):
    """A request head longer than the codec's ``max_head_bytes``; answered with 400."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit,
                         f"request head of at least {size} bytes exceeds max_head_bytes {limit}")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request head. Header names are lower case, values stripped (latin-1)."""

    method: str
    target: str
    version: str  #: "HTTP/1.0" or "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) (HTTP/1\.[01])")
_FIELD_NAME = re.compile(_TCHAR + rb"+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (RFC 9110 5.5)
_BLANK_LINE = re.compile(rb"\n\r?\n")


class HttpRequestCodec:
    """Frames HTTP/1.x request heads (request line and headers up to the blank line), sans-IO.

    ``maybe_take_frame`` returns an :class:`HttpRequest` or None (not all there yet);
    it raises :class:`HeadTooLarge` as soon as ``max_head_bytes`` are buffered with no
    end of head among them (the limit is exact, however TCP cut the bytes) and
    :class:`BadRequest` for a head that is not HTTP/1.0 or 1.1. Lines may end in CRLF
    or LF; empty lines before the request line are skipped (RFC 9112 2.2) but count
    toward the limit. Bodies are not framed: bytes after a head are read as the next
    head, so a server that reads past a request with a body must not use this (the
    metrics server reads one request a connection). How far it has looked is kept in
    the ring (``RingBuffer.scan``), so one instance may serve every connection.
    """

    __slots__ = ("max_frame_bytes",)

    def __init__(self, max_head_bytes: int = 8192) -> None:
        """8 KiB: nginx's large_client_header_buffers and Node's limit before v14; a
        Prometheus scrape's head is about 200 bytes. ``ValueError`` if below 16."""
        if max_head_bytes < 16:
            raise ValueError(f"max_head_bytes {max_head_bytes} must be at least 16")
        self.max_frame_bytes = max_head_bytes

    def maybe_take_frame(self, buf: RingBuffer) -> HttpRequest | None:
        """Consume and return the next request head; None if it is not all here yet."""
        limit = self.max_frame_bytes
        n = len(buf)
        end = n if n < limit else limit
        # A head ends with a newline: look at the window only when a new one came.
        found = None
        if buf.find(b"\n", buf.scan, end) >= 0:
            window = buf.peek(end)
            lead = end - len(window.lstrip(b"\r\n"))
            found = _BLANK_LINE.search(window, lead)
        if found is None:
            if n >= limit:
                raise HeadTooLarge(n, limit)
            buf.scan = end
            return None
        buf.scan = 0
        buf.consume(found.end())
        return _parse_head(window[lead:found.start()])

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At end of input: the bytes of an incomplete head (``b""`` if none)."""
        buf.scan = 0
        return buf.take(len(buf))

    def encode(self, msg: Any) -> bytes:
        return bytes(msg)

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        out.write(msg)


def _parse_head(head: bytes) -> HttpRequest:
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise BadRequest("request line is not METHOD SP TARGET SP HTTP/1.0 or HTTP/1.1")
    headers = []
    for i, line in enumerate(lines[1:], 2):
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:  # obs-fold, "Name :", no colon
            raise BadRequest(f"line {i} of the request head is not a header field")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest(f"header field on line {i} holds a control character")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    req = HttpRequest(m[1].decode("ascii"), m[2].decode("ascii"), m[3].decode("ascii"),
                      tuple(headers))
    if req.version == "HTTP/1.1" and req.header("host") is None:
        raise BadRequest("an HTTP/1.1 request without a Host header")  # RFC 9112 3.2
    return req


# ------------------------------------------------------------------ the server

Provider = Callable[[Callable[[dict[str, Any]], None]], None]
_TEXT = "text/plain; charset=utf-8"


class _Gate:
    """The open connections of one metrics listener, against its cap (the listener's own
    cap counts only the service's connections, and these are not counted)."""

    __slots__ = ("open", "max_conns")

    def __init__(self, max_conns: int) -> None:
        self.open = 0
        self.max_conns = max_conns


def _respond(conn: Transport, status: int, body: bytes, head_only: bool = False, *,
             content_type: str = _TEXT, extra: str = "",
             reason: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
    """Answer and close after the flush (Connection: close; no keep-alive)."""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
            f"Date: {formatdate(usegmt=True)}\r\nConnection: close\r\n\r\n")
    conn.write(head.encode("ascii") + (b"" if head_only else body))
    conn.close(reason)


class MetricsHandler(Handler):
    """One connection of the metrics server: its first request is answered (``provide``
    gives the document), then it closes; ``gate`` caps the open ones (None: no cap)."""

    __slots__ = ("_provide", "_gate", "_admitted", "_busy")

    def __init__(self, provide: Provider, gate: _Gate | None = None) -> None:
        self._provide = provide
        self._gate = gate if gate is not None else _Gate(1 << 62)
        self._admitted = False
        self._busy = False  # a request was taken: nothing more is read

    def on_connect(self, conn: Transport) -> None:
        gate = self._gate
        if gate.open >= gate.max_conns:
            self._busy = True
            _respond(conn, 503, b"too many metrics connections\n", reason=CloseReason.SERVER_FULL)
            return
        gate.open += 1
        self._admitted = True

    def on_message(self, conn: Transport, req: HttpRequest) -> None:
        if self._busy:
            return
        self._busy = True
        conn.pause_reading()  # one request a connection: what follows waits in the kernel
        head_only = req.method == "HEAD"
        if req.path != "/metrics":
            _respond(conn, 404, b"not found: try /metrics\n", head_only)
        elif req.method not in ("GET", "HEAD"):
            _respond(conn, 405, b"method not allowed\n", head_only, extra="Allow: GET, HEAD\r\n")
        else:
            def reply(doc: dict[str, Any]) -> None:
                if conn.closed:  # the client left while the provider gathered
                    return
                try:
                    body = render_metrics(doc).encode()
                except (TypeError, ValueError) as exc:
                    log.error("metrics: cannot render the stats document: %s", exc)
                    _respond(conn, 500, b"cannot render the stats document\n", head_only)
                    return
                _respond(conn, 200, body, head_only, content_type=CONTENT_TYPE)

            try:
                self._provide(reply)
            except Exception:  # noqa: BLE001 - a failing provider fails this scrape only
                log.exception("metrics: the stats provider failed")
                _respond(conn, 500, b"cannot gather the stats document\n", head_only)

    def on_codec_error(self, conn: Transport, exc: CodecError) -> None:
        if self._busy:
            conn.close(exc.reason)
            return
        self._busy = True
        if isinstance(exc, FrameTimeout):  # a head trickling in: slowloris
            _respond(conn, 408, b"request head timed out\n", reason=exc.reason)
        else:
            _respond(conn, 400, f"bad request: {exc}\n".encode(), reason=exc.reason)

    def on_eof(self, conn: Transport, remainder: bytes) -> bool:
        return self._busy  # a reply on its way closes the connection itself

    def on_close(self, conn: Transport, reason: CloseReason) -> None:
        if self._admitted:
            self._admitted = False
            self._gate.open -= 1


def serve_metrics(loop: Loop, address: tuple[str, int], provider: Provider | None = None, *,
                  max_conns: int = 64, idle_timeout_s: float = 5.0) -> Listener:
    """Serve ``GET /metrics`` (and ``HEAD``) on TCP ``address`` = ``(host, port)``, on ``loop``.

    Each request is answered with ``render_metrics`` of the document that
    ``provider(reply)`` hands to ``reply`` (it may do so later, from the loop; default:
    ``loop_stats(loop)`` at once), then the connection closes. Other paths get 404,
    other methods 405, a malformed or oversized head 400, a head still incomplete
    after ``idle_timeout_s`` 408; a client that sends nothing is closed after
    ``idle_timeout_s``, so a provider must reply within it. Beyond ``max_conns`` open
    at once, clients get 503. These connections are not counted as the loop's.
    Raises ``ValueError`` for a bad argument and ``OSError`` if the address cannot be bound.
    """
    if not (isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int)):
        raise ValueError(f"metrics address must be (host, port), not {address!r}")
    if max_conns < 1:
        raise ValueError(f"max_conns must be at least 1, not {max_conns}")
    if not idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s must be above 0, not {idle_timeout_s}")
    if provider is None:
        def provider(reply: Callable[[dict[str, Any]], None]) -> None:
            reply(loop_stats(loop))
    provide: Provider = provider
    gate = _Gate(max_conns)
    codec = HttpRequestCodec()  # keeps no state of its own: one for every connection
    return loop.listen(address, lambda: MetricsHandler(provide, gate), lambda: codec,
                       counted=False, idle_timeout_s=idle_timeout_s,
                       frame_timeout_s=idle_timeout_s, linger_s=0.5)
