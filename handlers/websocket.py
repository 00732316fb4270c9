"""WebSocket (RFC 6455), server side, for reactor handlers, with wsproto as the protocol engine.

Two pieces, one per side of the reactor's model (docs/examples/ws_chat.md explains the fit):

- ``WebSocketCodec`` (one per connection: wsproto's state is per connection) turns the
  receive ring into protocol events and messages into wire bytes. It takes only *complete*
  frames out of the ring: it reads the few header bytes that say how long a frame is, leaves
  a partial frame in the ring, and hands wsproto one whole frame at a time. So the bytes of
  a message still arriving stay in the reactor's pooled rings (counted, capped by the fair
  share, visible to ``frame_timeout_s``), wsproto never buffers, a frame over the message cap
  is refused from its header before its payload is read, and ``pause_reading`` stops
  delivery exactly between two frames. wsproto does everything else: the HTTP upgrade
  (through h11), unmasking, validation, UTF-8 decoding, the close state machine.
- ``WebSocketHandler`` (a Handler base class, one per connection) is the policy:
  accept the upgrade or answer an HTTP error, answer pings, assemble nothing (the codec
  hands whole messages), run the close handshake both ways, fail the connection with the
  right close code. An application subclasses it and overrides ``on_ws_message`` and
  friends; it never sees wsproto unless it wants the upgrade request.

Sending one message to many peers: a server frame is unmasked and this adapter negotiates
no extension, so a message's frame is the same bytes for every peer. ``encode_message``
frames it once and ``broadcast_message`` hands those bytes to ``reactor.broadcast``,
which copies them into each writable peer's send ring and skips the laggards.

wsproto is imported here and in the examples only; the core never imports ``handlers``.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import deque
from typing import Any, Callable, Iterable, Protocol

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Event, Ping, Pong,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from reactor import BroadcastResult, CloseReason, Handler, Transport, broadcast
from reactor.address import format_address
from reactor.errors import CodecError, FrameTimeout, FrameTooLong
from reactor.ring import RingBuffer

__all__ = [
    "GOING_AWAY", "INVALID_DATA", "MESSAGE_TOO_BIG", "NORMAL_CLOSURE", "NO_CLOSE_FRAME",
    "POLICY_VIOLATION", "PROTOCOL_ERROR", "HandshakeError", "MessageTooBig", "Timers",
    "WebSocketCodec", "WebSocketError", "WebSocketHandler", "WebSocketTimeout",
    "broadcast_message", "encode_message",
]

log = logging.getLogger("handlers.websocket")

# Close codes (RFC 6455 7.4.1) this module sends or reports.
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_CLOSE_FRAME = 1006  #: reported, never sent: the connection ended without a Close frame
INVALID_DATA = 1007  #: a text message that is not UTF-8
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009

_TEXT, _BINARY = 0x1, 0x2
_MAX_HEADER = 14  # 2 + an 8-byte length + a 4-byte mask
_BLANK_LINE = re.compile(rb"\n\r?\n")  # where an HTTP head ends (h11 accepts bare LF too)
_UPGRADE_WEBSOCKET = re.compile(rb"(?im)^upgrade[ \t]*:[^\n]*websocket")
_HTTP_REQUEST_LINE = re.compile(rb"[!-~]+ [!-~]+ HTTP/1\.[01]\r?\n")
_ACCEPT = AcceptConnection()

# The codec's phases.
_HANDSHAKE = 0  # reading the HTTP upgrade request
_REQUESTED = 1  # the request went to the handler; waiting for its accept or refusal
_FRAMES = 2  # upgraded: reading frames
_DONE = 3  # no more input: the peer's Close came, or the connection failed or was refused


# ------------------------------------------------------------------ errors


class WebSocketError(CodecError):
    """The peer broke the protocol after the upgrade; the connection is failed with Close
    ``code`` (1002, or 1007 for a text message that is not UTF-8)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = int(code)
        super().__init__(message)


class MessageTooBig(FrameTooLong):
    """A message (all its fragments) is over the codec's ``max_message``: Close 1009. Raised
    from the header of the frame that would pass the cap, before its payload is read."""

    code = MESSAGE_TOO_BIG

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit, f"message of at least {size} bytes exceeds "
                                      f"max_message {limit}")


class HandshakeError(CodecError):
    """The upgrade request was refused: ``status`` is the HTTP answer (400 malformed, 426 no
    WebSocket upgrade asked or a version other than 13, 431 over ``max_handshake``)."""

    def __init__(self, status: int, message: str,
                 headers: Iterable[tuple[bytes, bytes]] = (),
                 reason: CloseReason = CloseReason.PROTOCOL_ERROR) -> None:
        self.status = status
        self.headers = list(headers)
        self.reason = reason
        super().__init__(message)


class WebSocketTimeout(FrameTimeout):
    """A partial frame, or a partial upgrade request, outlived ``frame_timeout_s``: 408
    before the upgrade, Close 1008 after it."""


# ------------------------------------------------------------------- framing


def _frame_header(opcode: int, size: int) -> bytes:
    """The header of a final, unmasked frame (RFC 6455 5.2): what a server sends."""
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 0x10000:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


def _payload(msg: Any) -> tuple[int, Any]:
    if isinstance(msg, str):
        return _TEXT, msg.encode("utf-8")
    if isinstance(msg, (bytes, bytearray, memoryview)):
        return _BINARY, msg
    raise TypeError(f"a WebSocket message is str (text) or bytes-like (binary), "
                    f"not {type(msg).__name__}")


def encode_message(msg: str | bytes | bytearray | memoryview) -> bytes:
    """``msg`` as a server sends it: one final unmasked frame, text for ``str`` (UTF-8),
    binary for bytes-like. The same bytes for every peer (no extension is negotiated), so
    a broadcast frames its message once."""
    opcode, payload = _payload(msg)
    return b"".join((_frame_header(opcode, memoryview(payload).nbytes), payload))


def broadcast_message(conns: Iterable[Any], msg: str | bytes | bytearray | memoryview
                      ) -> BroadcastResult:
    """Frame ``msg`` once and queue it for every writable connection of ``conns``
    (``reactor.broadcast``: peers above their high watermark are skipped and counted).

    The frame bypasses each peer's codec, so pass only peers whose WebSocket is open
    (``WebSocketHandler.ws_open``): after a Close no data frame may follow.
    """
    return broadcast(conns, encode_message(msg))


# --------------------------------------------------------------------- codec


class WebSocketCodec:
    """The server side of one WebSocket connection as a reactor codec (per connection).

    ``maybe_take_frame`` returns, one at a time: the upgrade ``wsproto.events.Request``
    (once; the handler answers it by sending ``AcceptConnection`` or an HTTP refusal),
    then whole messages (``str`` for text, ``bytes`` for binary, fragments assembled),
    wsproto's ``Ping`` and ``Pong``, and the peer's ``CloseConnection`` (after which the
    codec reads nothing more). It raises ``HandshakeError``, ``MessageTooBig``
    and ``WebSocketError`` (the reactor's ``on_codec_error``).

    ``encode``/``encode_into`` take a ``str`` or bytes-like message (framed here, refused
    with ``ValueError`` unless the WebSocket is open) or a wsproto event, which goes through
    wsproto's state machine (the handshake answer, pings, pongs, Close).

    ``max_message``: the most payload bytes a message may carry, fragments summed (1 MiB);
    ``max_handshake``: the most bytes the upgrade request's head may take (16 KiB, h11's own
    limit).
    """

    __slots__ = ("max_message", "max_handshake", "max_frame_bytes", "_ws", "_phase",
                 "_scanned", "_parts", "_size", "_ready")

    frame_timeout_error = WebSocketTimeout

    def __init__(self, max_message: int = 1 << 20, max_handshake: int = 16384) -> None:
        """``ValueError`` if ``max_message < 0`` or ``max_handshake < 64``."""
        if max_message < 0:
            raise ValueError(f"max_message {max_message} must be at least 0")
        if max_handshake < 64:
            raise ValueError(f"max_handshake {max_handshake} must be at least 64")
        self.max_message = max_message
        self.max_handshake = max_handshake
        self.max_frame_bytes = max(max_message + _MAX_HEADER, max_handshake)
        self._ws = WSConnection(ConnectionType.SERVER)
        self._phase = _HANDSHAKE
        self._scanned = 0  # bytes of the request head searched for its end already
        self._parts: list[Any] = []  # the fragments of the message arriving
        self._size = 0  # their payload bytes, as on the wire
        self._ready: deque[Any] = deque()  # items decoded but not handed out yet

    @property
    def state(self) -> ConnectionState:
        """wsproto's state of the connection (CONNECTING, OPEN, LOCAL_CLOSING, ...)."""
        return self._ws.state

    # ------------------------------------------------------------ receiving

    def maybe_take_frame(self, buf: RingBuffer) -> Any:
        """The next request, message or control event, or ``None`` if none is complete."""
        if self._ready:
            return self._ready.popleft()
        phase = self._phase
        if phase == _FRAMES:
            return self._take_frames(buf)
        if phase == _HANDSHAKE:
            return self._take_request(buf)
        if phase == _DONE and buf:
            buf.consume(len(buf))  # after the peer's Close nothing more is read (RFC 6455 5.5.1)
        return None

    def _take_request(self, buf: RingBuffer) -> Request | None:
        n = len(buf)
        limit = self.max_handshake
        end = n if n < limit else limit
        start = self._scanned
        found = None
        if buf.find(b"\n", start, end) >= 0:  # only a new line can end the head
            start = max(start - 2, 0)  # the blank line may begin before the new bytes
            found = _BLANK_LINE.search(buf.peek(end - start, start))
        if found is None:
            if n >= limit:
                self._phase = _DONE
                raise HandshakeError(431, f"upgrade request over {limit} bytes",
                                     reason=CloseReason.FRAME_TOO_LONG)
            self._scanned = end
            return None
        head = buf.take(start + found.end())
        self._scanned = 0
        try:
            self._ws.receive_data(head)
            events = list(self._ws.events())
        except RemoteProtocolError as exc:
            self._phase = _DONE
            hint = exc.event_hint
            status, headers = 400, []
            if isinstance(hint, RejectConnection):
                status, headers = hint.status_code, list(hint.headers)
            message = str(exc)
            if _HTTP_REQUEST_LINE.match(head) and not _UPGRADE_WEBSOCKET.search(head):
                # HTTP, but no WebSocket request at all: say what this endpoint wants
                status, headers = 426, [(b"Upgrade", b"websocket"),
                                        (b"Sec-WebSocket-Version", b"13")]
                message = f"this is a WebSocket endpoint; the request asked no upgrade ({exc})"
            raise HandshakeError(status, message, headers) from None
        for event in events:
            if isinstance(event, Request):
                self._phase = _REQUESTED
                return event
        self._phase = _DONE
        raise HandshakeError(400, "no upgrade request in the head")

    def _take_frames(self, buf: RingBuffer) -> Any:
        while True:
            n = len(buf)
            if n < 2:
                return None
            b0, b1 = buf.peek(2)
            size = 2 + (4 if b1 & 0x80 else 0)
            length = b1 & 0x7F
            if b0 & 0x08:  # a control frame
                if length > 125:  # wsproto refuses it from these two bytes: let it say so
                    self._feed(buf.take(2))
                    self._phase = _DONE  # (and should it not, its length cannot be trusted)
                    raise WebSocketError(PROTOCOL_ERROR, "control frame over 125 bytes")
            else:
                if length == 126:
                    size += 2
                    if n < 4:
                        return None
                    length = int.from_bytes(buf.peek(2, 2), "big")
                elif length == 127:
                    size += 8
                    if n < 10:
                        return None
                    length = int.from_bytes(buf.peek(8, 2), "big")
                if self._size + length > self.max_message:
                    self._phase = _DONE
                    raise MessageTooBig(self._size + length, self.max_message)
            if n < size + length:
                return None  # a partial frame stays in the ring
            if not b0 & 0x08:
                self._size += length
            item = self._feed(buf.take(size + length))
            if item is not None:
                return item

    def _feed(self, frame: bytes) -> Any:
        """Hand wsproto one whole frame; its first resulting item (others wait in ``_ready``)."""
        self._ws.receive_data(frame)
        for event in self._ws.events():
            item = self._item(event)
            if item is not None:
                self._ready.append(item)
        return self._ready.popleft() if self._ready else None

    def _item(self, event: Event) -> Any:
        if isinstance(event, (TextMessage, BytesMessage)):
            parts = self._parts
            if not event.message_finished:
                parts.append(event.data)
                return None
            self._size = 0
            if not parts:
                return event.data
            parts.append(event.data)
            data = parts[0][:0].join(parts)
            parts.clear()
            return data
        if isinstance(event, CloseConnection):
            self._phase = _DONE
            if self._ws.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                return event  # the peer's Close frame
            # wsproto reports a frame it refused as a CloseConnection it wants us to send,
            # leaving its state as it was: that is how the two are told apart.
            raise WebSocketError(event.code, event.reason or "bad frame")
        if isinstance(event, (Ping, Pong)):
            return event
        return None  # pragma: no cover - no other event follows the upgrade

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At EOF: the bytes of an incomplete frame or request (``b""`` if none)."""
        self._scanned = 0
        return buf.take(len(buf))

    # -------------------------------------------------------------- sending

    def encode(self, msg: Any) -> bytes:
        """The wire bytes of ``msg``: a message framed by ``encode_message`` (no state
        involved: any instance frames for any peer), or a wsproto event sent through this
        connection's state machine."""
        if isinstance(msg, Event):
            return bytes(self._send_event(msg))
        return encode_message(msg)

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        """Write ``msg``'s wire bytes into ``out`` (a message's header, then its payload as
        is: no concatenation). ``ValueError`` for a message while the WebSocket is not open."""
        if isinstance(msg, Event):
            out.write(self._send_event(msg))
            return
        opcode, payload = _payload(msg)
        if self._ws.state is not ConnectionState.OPEN:
            raise ValueError(f"cannot send a message: the WebSocket is {self._ws.state.name}")
        out.write(_frame_header(opcode, memoryview(payload).nbytes))
        out.write(payload)

    def _send_event(self, event: Event) -> bytes | bytearray:
        try:
            data = self._ws.send(event)
        except LocalProtocolError as exc:
            raise ValueError(f"cannot send {type(event).__name__} now: {exc}") from None
        if isinstance(event, AcceptConnection):
            self._phase = _FRAMES
        elif isinstance(event, RejectConnection):
            self._phase = _DONE
        return data


# ------------------------------------------------------------------- handler


class Timers(Protocol):
    """What the handler needs to time the close handshake (``reactor.Loop`` is one)."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` in ``delay`` seconds; return a handle for cancel_timer."""
        ...

    def cancel_timer(self, timer: Any) -> None:
        """Cancel what ``call_later`` returned (a no-op once it ran)."""
        ...


# The handler's view of the WebSocket.
_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)


class WebSocketHandler(Handler):
    """A reactor Handler speaking WebSocket (server side), with a ``WebSocketCodec``.

    Make one per connection (the listener's handler factory returns a new one): it keeps
    the connection's WebSocket state. Override the ``on_ws_*`` callbacks; call
    ``send_text``, ``send_bytes``, ``ping`` and ``ws_close``.

    What it does on its own:

    - the upgrade: ``on_ws_request`` decides (default: accept); a refused or malformed
      request gets an HTTP error (403, 400, 426, 431; 408 if it outlived
      ``frame_timeout_s``) and the connection closes;
    - a Ping is answered with a Pong carrying its payload; with ``heartbeat_s`` set, a
      quiet connection is pinged; with ``idle_timeout_s`` set, a connection that sent
      nothing that long is closed with 1001;
    - the peer's Close is answered with a Close of the same code, then the server closes
      the TCP connection first (RFC 6455 7.1.1);
    - ``ws_close`` sends a Close and waits for the peer's, at most ``close_timeout_s``,
      before closing the TCP connection; messages arriving meanwhile are dropped.
      Without ``timers`` there is no clock to wait with: the TCP connection is closed
      gracefully at once (our side shut down after the Close; the reactor's linger then
      waits for the peer's FIN);
    - a protocol error fails the connection with Close 1002 (1007 for text that is not
      UTF-8, 1009 for a message over the cap, 1008 for a frame that outlived
      ``frame_timeout_s``), logged in one line.

    ``on_ws_close`` runs exactly once for a connection whose ``on_ws_connect`` ran, when
    the WebSocket is over (after it nothing can be sent), with the peer's close code if
    its Close came, else the one we sent, else 1006.
    """

    __slots__ = ("timers", "close_timeout_s", "conn", "_ws_state", "_timer", "_received",
                 "_sent", "_why")

    def __init__(self, timers: Timers | None = None, *, close_timeout_s: float = 5.0) -> None:
        """``timers``: the loop (anything with ``call_later``/``cancel_timer``), to time
        our Close; ``close_timeout_s``: how long it waits for the peer's."""
        self.timers = timers
        self.close_timeout_s = close_timeout_s
        self.conn: Transport | None = None  #: set in on_connect
        self._ws_state = _CONNECTING
        self._timer: Any = None
        self._received: tuple[int, str] | None = None  # the peer's Close
        self._sent: tuple[int, str] | None = None  # ours
        self._why = CloseReason.LOCAL_CLOSE  # the TCP close reason after our Close

    # ------------------------------------------------- for subclasses to override

    def on_ws_request(self, conn: Transport, request: Request) -> bool:
        """The upgrade request (``request.target``, ``.host``, ``.extra_headers``...):
        return False to refuse it with 403. Default: accept."""
        return True

    def on_ws_connect(self, conn: Transport) -> None:
        """The upgrade is done: messages may be sent."""

    def on_ws_message(self, conn: Transport, data: str | bytes) -> None:
        """A whole message: ``str`` if it was text, ``bytes`` if binary."""

    def on_ws_pong(self, conn: Transport, payload: bytes) -> None:
        """The peer answered a ping (or sent an unsolicited pong)."""

    def on_ws_close(self, conn: Transport, code: int, reason: str) -> None:
        """The WebSocket is over (see the class docstring for the code)."""

    # ----------------------------------------------------- for subclasses to call

    @property
    def ws_open(self) -> bool:
        """Upgraded, and no Close sent or received: messages may be sent."""
        return self._ws_state == _OPEN

    def send_text(self, text: str) -> bool:
        """Queue a text message; False if the WebSocket is not open or the connection
        refused it (closing, or over ``max_send_buffer``)."""
        if not isinstance(text, str):
            raise TypeError(f"send_text takes a str, not {type(text).__name__}")
        return self._ws_state == _OPEN and self.conn.send(text)  # type: ignore[union-attr]

    def send_bytes(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue a binary message; False as ``send_text``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes takes bytes, not {type(data).__name__}")
        return self._ws_state == _OPEN and self.conn.send(data)  # type: ignore[union-attr]

    def ping(self, payload: bytes = b"") -> bool:
        """Send a Ping (``payload`` up to 125 bytes); the Pong comes to ``on_ws_pong``."""
        return self._ws_state == _OPEN and self.conn.send(Ping(payload))  # type: ignore[union-attr]

    def ws_close(self, code: int = NORMAL_CLOSURE, reason: str = "",
                 why: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
        """Start the close handshake with ``code`` and ``reason`` (at most 123 UTF-8 bytes
        are sent); ``why`` is the connection's close reason for the reactor's books.
        Idempotent; before the upgrade it just closes the connection."""
        conn = self.conn
        if conn is None:
            return
        if self._ws_state == _OPEN:
            conn.send(CloseConnection(code, reason))
            self._sent = (code, reason)
            self._why = why
            self._ws_state = _CLOSING
            if self.timers is None:
                conn.close(why)  # on_close reports the end
            else:
                self._timer = self.timers.call_later(self.close_timeout_s, self._close_expired)
        elif self._ws_state == _CONNECTING:
            conn.close(why)

    # ---------------------------------------------------------- the reactor's side

    def on_connect(self, conn: Transport) -> None:
        """Keeps ``conn`` (``self.conn``); the upgrade request comes next."""
        self.conn = conn

    def on_message(self, conn: Transport, msg: Any) -> None:
        """Dispatches what the codec decoded: the request, messages, pings, the peer's Close."""
        if isinstance(msg, (str, bytes)):
            if self._ws_state == _OPEN:
                self.on_ws_message(conn, msg)
            # else: after our Close, the peer's last messages are dropped (RFC 6455 5.5.1)
        elif isinstance(msg, Ping):
            if self._ws_state == _OPEN:
                conn.send(msg.response())
        elif isinstance(msg, Pong):
            if self._ws_state == _OPEN:
                self.on_ws_pong(conn, bytes(msg.payload))
        elif isinstance(msg, CloseConnection):
            self._peer_closed(conn, msg)
        elif isinstance(msg, Request):
            if self.on_ws_request(conn, msg):
                conn.send(_ACCEPT)
                self._ws_state = _OPEN
                self.on_ws_connect(conn)
            else:
                self._http_error(conn, 403, "refused")
                conn.close(CloseReason.LOCAL_CLOSE)

    def _peer_closed(self, conn: Transport, close: CloseConnection) -> None:
        self._received = (int(close.code), close.reason or "")
        reason = CloseReason.PEER_CLOSED
        if self._ws_state == _OPEN:
            # Answer with the same code (1005, "no code", is answered with an empty Close).
            conn.send(CloseConnection(close.code))
        else:
            reason = self._why
        self._end(conn)
        conn.close(reason)  # the server closes the TCP connection first (RFC 6455 7.1.1)

    def _close_expired(self) -> None:
        self._timer = None
        conn = self.conn
        if self._ws_state == _CLOSING and conn is not None:
            log.debug("websocket %s: no Close from the peer in %g s", conn.id,
                      self.close_timeout_s)
            self._end(conn)
            conn.close(self._why)

    def _end(self, conn: Transport) -> None:
        """The WebSocket is over: report it once (if it ever opened)."""
        state = self._ws_state
        self._ws_state = _CLOSED
        if self._timer is not None:
            self.timers.cancel_timer(self._timer)  # type: ignore[union-attr]
            self._timer = None
        if state in (_OPEN, _CLOSING):
            code, reason = self._received or self._sent or (NO_CLOSE_FRAME, "")
            self.on_ws_close(conn, code, reason)

    def on_codec_error(self, conn: Transport, exc: CodecError) -> None:
        """Answers a refused upgrade with an HTTP error, a broken protocol with a Close
        (1002, 1007, 1008 or 1009); logs one line and closes the connection."""
        where = format_address(conn.peer)
        if self._ws_state == _CONNECTING:
            status = (exc.status if isinstance(exc, HandshakeError)
                      else 408 if isinstance(exc, FrameTimeout) else 400)
            log.info("websocket %s %s: upgrade refused with %d: %s", conn.id, where, status, exc)
            self._http_error(conn, status, str(exc),
                             exc.headers if isinstance(exc, HandshakeError) else ())
        else:
            code = (exc.code if isinstance(exc, (WebSocketError, MessageTooBig))
                    else POLICY_VIOLATION if isinstance(exc, FrameTimeout) else PROTOCOL_ERROR)
            log.info("websocket %s %s: failing the connection with %d: %s", conn.id, where,
                     code, exc)
            if self._ws_state == _OPEN:
                text = str(exc)[:100]  # a Close frame's reason holds 123 bytes at most
                conn.send(CloseConnection(code, text))
                self._sent = (code, text)
            self._end(conn)
        conn.close(exc.reason)

    def _http_error(self, conn: Transport, status: int, text: str,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        body = f"{status}: {text}\n".encode("utf-8", "replace")
        conn.send(RejectConnection(status_code=status, has_body=True, headers=[
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()), (b"Connection", b"close"),
            *headers]))
        conn.send(RejectData(body))

    def on_idle(self, conn: Transport) -> None:
        """Nothing received for ``idle_timeout_s`` (pongs and pings count): Close 1001."""
        if self._ws_state == _OPEN:
            self.ws_close(GOING_AWAY, "idle timeout", CloseReason.IDLE_TIMEOUT)
        else:
            conn.close(CloseReason.IDLE_TIMEOUT)

    def on_heartbeat(self, conn: Transport) -> None:
        """Nothing sent for ``heartbeat_s``: a Ping keeps the peer (and proxies) aware."""
        self.ping()

    def on_close(self, conn: Transport, reason: CloseReason) -> None:
        """The TCP connection is gone: ``on_ws_close`` if not reported yet (1006 if no
        Close frame went either way). An override must call this one."""
        self._end(conn)
