"""handlers/websocket.py on reactor.testing's Harness (the real Connection, no socket, a fake
clock), against wsproto's *client* side as the peer: the upgrade, messages in any chunking,
fragments, ping/pong, both close handshakes, the caps, protocol errors and HTTP refusals.
Frames wsproto's client will not write (bad ones, UTF-8 split across fragments) are built
by hand with ``client_frame``."""

from __future__ import annotations

import itertools
import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong,
                            RejectConnection, RejectData, Request, TextMessage)

from handlers import websocket as ws_module
from handlers.websocket import (HandshakeError, MessageTooBig, WebSocketCodec, WebSocketError,
                                WebSocketHandler, broadcast_message, encode_message)
from reactor import CloseReason
from reactor.testing import Harness

#: RFC 6455 1.3's example key and the accept token it must get.
KEY, ACCEPT = b"dGhlIHNhbXBsZSBub25jZQ==", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


class Recorder(WebSocketHandler):
    """Echoes every message back and writes down every callback."""

    def __init__(self, timers=None, *, echo: bool = True, accept: bool = True, **kw) -> None:
        super().__init__(timers, **kw)
        self.echo = echo
        self.accept = accept
        self.seen: list[tuple] = []
        self.tcp_closed: list[CloseReason] = []

    def on_ws_request(self, conn, request):
        self.seen.append(("request", request.target))
        return self.accept

    def on_ws_connect(self, conn):
        self.seen.append(("connect",))

    def on_ws_message(self, conn, data):
        self.seen.append(("message", data))
        if self.echo:
            assert (self.send_text(data) if isinstance(data, str) else self.send_bytes(data))

    def on_ws_pong(self, conn, payload):
        self.seen.append(("pong", payload))

    def on_ws_close(self, conn, code, reason):
        self.seen.append(("close", code, reason))

    def on_close(self, conn, reason):
        self.tcp_closed.append(reason)
        super().on_close(conn, reason)

    def messages(self) -> list:
        return [e[1] for e in self.seen if e[0] == "message"]

    def closes(self) -> list:
        return [e[1:] for e in self.seen if e[0] == "close"]


class Client:
    """wsproto's client side: an independent peer that masks its frames."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)

    def request(self, target: str = "/chat") -> bytes:
        return self.ws.send(Request(host="example.com", target=target))

    def send(self, event) -> bytes:
        return self.ws.send(event)

    def receive(self, data: bytes) -> list:
        self.ws.receive_data(data)
        return list(self.ws.events())


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client frame built by hand (RFC 6455 5.2), for what wsproto's client will not write."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgraded(handler: Recorder | None = None, codec: WebSocketCodec | None = None,
             **options) -> tuple[Harness, Client, Recorder]:
    """A connection past its upgrade: the harness, wsproto's client, the handler."""
    handler = handler if handler is not None else Recorder()
    h = Harness(handler, codec if codec is not None else WebSocketCodec(), **options)
    client = Client()
    h.feed(client.request())
    assert client.receive(h.take()) == [AcceptConnection()]
    assert handler.seen == [("request", "/chat"), ("connect",)]
    return h, client, handler


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def http_status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# ------------------------------------------------------------------ the upgrade


def test_the_upgrade_answers_101_with_the_rfc_accept_token():
    handler = Recorder()
    with Harness(handler, WebSocketCodec()) as h:
        h.feed(UPGRADE)
        head = h.take()
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n" in head
        assert head.endswith(b"\r\n\r\n") and b"Sec-WebSocket-Extensions" not in head
        assert handler.seen == [("request", "/chat"), ("connect",)] and handler.ws_open


def test_frames_pipelined_behind_the_request_are_read_after_the_upgrade():
    handler = Recorder()
    with Harness(handler, WebSocketCodec()) as h:
        h.feed(UPGRADE + client_frame(0x1, b"early") + client_frame(0x2, b"\x00bin"))
        assert h.take().endswith(b"\r\n\r\n" + encode_message("early") + encode_message(b"\x00bin"))
        assert handler.messages() == ["early", b"\x00bin"]


#: A conversation: each item is a message (its fragments) and whether pings go between them.
fragments_of = st.one_of(
    st.lists(st.text(max_size=40), min_size=1, max_size=4),
    st.lists(st.binary(max_size=300), min_size=1, max_size=4))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(fragments_of, st.booleans()), max_size=8),
       st.lists(st.integers(0, 1 << 16), max_size=25))
def test_any_chunking_of_a_conversation_gives_the_same_whole_messages(conversation, cuts):
    client = Client()
    request = client.request()
    # The client's handshake completed against a scratch server, so it can write frames now;
    # the harness must then answer the same request with the same 101.
    scratch = WSConnection(ConnectionType.SERVER)
    scratch.receive_data(request)
    assert isinstance(next(scratch.events()), Request)
    response = scratch.send(AcceptConnection())
    assert client.receive(response) == [AcceptConnection()]
    stream = [request]
    want, pings = [], []
    for n, (parts, ping) in enumerate(conversation):
        kind = TextMessage if isinstance(parts[0], str) else BytesMessage
        for i, part in enumerate(parts):
            stream.append(client.send(kind(part, message_finished=i == len(parts) - 1)))
            if ping and i == 0:  # a control frame may come between fragments
                pings.append(b"p%d" % n)
                stream.append(client.send(Ping(pings[-1])))
        want.append(parts[0][:0].join(parts))
    handler = Recorder()
    with Harness(handler, WebSocketCodec()) as h:
        for piece in cut(b"".join(stream), cuts):
            h.feed(piece)
        out = h.take()
        assert out.startswith(response)
        assert handler.messages() == want
        events = client.receive(out[len(response):])
        assert [e.payload for e in events if isinstance(e, Pong)] == pings
        assert [e.data for e in events if not isinstance(e, Pong)] == want
        assert h.close_reason is None and h.conn.recv_buffered == 0


def test_a_utf8_character_may_be_split_between_fragments():
    h, _, handler = upgraded()
    text = "€uro"
    raw = text.encode()
    h.feed(client_frame(0x1, raw[:1], fin=False) + client_frame(0x0, raw[1:2], fin=False))
    assert handler.messages() == []
    h.feed(client_frame(0x0, raw[2:]))
    assert handler.messages() == [text]
    assert h.take() == encode_message(text)


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
def test_messages_of_every_length_encoding_arrive_whole_in_small_reads(size):
    h, client, handler = upgraded(Recorder(echo=False))
    data = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
    frame = client.send(BytesMessage(data))
    for i in range(0, len(frame), 4000):
        h.feed(frame[i:i + 4000])
    assert handler.messages() == [data] and h.conn.recv_buffered == 0


def test_a_partial_frame_waits_in_the_ring_and_counts_as_a_partial_frame():
    h, client, handler = upgraded(frame_timeout_s=5.0)
    frame = client.send(BytesMessage(b"z" * 1000))
    h.feed(frame[:600])
    assert handler.messages() == [] and h.conn.recv_buffered == 600
    h.feed(frame[600:])
    assert handler.messages() == [b"z" * 1000] and h.conn.recv_buffered == 0


def test_pausing_in_a_callback_stops_delivery_between_two_frames():
    class Pauser(Recorder):
        def on_ws_message(self, conn, data):
            super().on_ws_message(conn, data)
            conn.pause_reading()

    h, client, handler = upgraded(Pauser(echo=False))
    h.feed(b"".join(client.send(TextMessage(f"m{i}")) for i in range(3)))
    assert handler.messages() == ["m0"]
    for n in (2, 3):
        h.conn.resume_reading()
        h.run()
        assert handler.messages() == [f"m{i}" for i in range(n)]


# ------------------------------------------------------------------ ping and pong


def test_a_ping_is_answered_with_a_pong_of_the_same_payload():
    h, client, handler = upgraded()
    h.feed(client.send(Ping(b"are you there?")))
    assert client.receive(h.take()) == [Pong(b"are you there?")]
    assert handler.seen[2:] == []


def test_the_server_pings_and_hears_the_pong():
    h, client, handler = upgraded()
    assert handler.ping(b"hb")
    h.run()  # the loop flushes once per turn
    events = client.receive(h.take())
    assert events == [Ping(b"hb")]
    h.feed(client.send(events[0].response()))
    assert handler.seen[-1] == ("pong", b"hb")


def test_a_quiet_connection_is_pinged_on_the_heartbeat():
    h, client, _ = upgraded(heartbeat_s=10.0)
    h.advance(10.0)
    assert client.receive(h.take()) == [Ping(b"")]


# ------------------------------------------------------------------ closing


def test_the_peers_close_is_answered_then_the_server_closes_tcp_first():
    h, client, handler = upgraded()
    h.feed(client.send(CloseConnection(1000, "bye")))
    assert client.receive(h.take()) == [CloseConnection(1000, "")]
    assert handler.closes() == [(1000, "bye")] and not handler.ws_open
    assert h.fin_sent and h.close_reason is CloseReason.PEER_CLOSED
    assert not handler.send_text("too late")
    h.feed_eof()
    assert h.closed and handler.tcp_closed == [CloseReason.PEER_CLOSED]
    assert handler.closes() == [(1000, "bye")]  # once


def test_a_close_without_a_code_is_answered_with_an_empty_close():
    h, _, handler = upgraded()
    h.feed(client_frame(0x8))
    assert h.take() == b"\x88\x00"
    assert handler.closes() == [(1005, "")]


def test_a_server_close_waits_for_the_peers_close_then_closes_tcp():
    h, client, handler = upgraded()
    handler.timers = h.loop
    handler.ws_close(1000, "done")
    h.run()
    assert client.receive(h.take()) == [CloseConnection(1000, "done")]
    assert not h.fin_sent and not handler.ws_open and handler.closes() == []
    assert not handler.send_text("no more")
    with pytest.raises(ValueError):
        h.conn.send("no more")  # the codec refuses a message after our Close
    # A message the client sent before it read our Close, then its answer.
    h.feed(client_frame(0x1, b"in flight") + client.send(CloseConnection(1000)))
    assert handler.messages() == []  # dropped: we were closing
    assert h.take() == b"" and h.fin_sent  # the Close was ours; nothing more goes out
    assert handler.closes() == [(1000, "")]
    assert h.close_reason is CloseReason.LOCAL_CLOSE
    h.feed_eof()
    h.advance(10.0)  # past the close timeout: nothing more happens
    assert h.closed and handler.closes() == [(1000, "")]


def test_a_server_close_gives_up_on_a_silent_peer_after_close_timeout():
    h, client, handler = upgraded(Recorder(close_timeout_s=3.0))
    handler.timers = h.loop
    handler.ws_close(1001, "going away")
    h.run()
    assert client.receive(h.take()) == [CloseConnection(1001, "going away")]
    h.advance(2.9)
    assert not h.fin_sent
    h.advance(0.2)
    assert h.fin_sent and handler.closes() == [(1001, "going away")]


def test_without_timers_a_server_close_shuts_tcp_down_at_once():
    h, client, handler = upgraded()
    handler.ws_close(4000, "custom")
    h.run()
    assert client.receive(h.take()) == [CloseConnection(4000, "custom")]
    assert h.fin_sent
    h.feed_eof()
    assert h.closed and handler.closes() == [(4000, "custom")]


def test_a_peer_that_vanishes_without_a_close_is_reported_as_1006():
    h, _, handler = upgraded()
    h.feed_eof()
    assert h.closed and handler.closes() == [(1006, "")]
    assert handler.tcp_closed == [CloseReason.PEER_CLOSED]


def test_an_idle_connection_is_closed_with_1001():
    h, client, handler = upgraded(Recorder(close_timeout_s=1.0), idle_timeout_s=30.0)
    handler.timers = h.loop
    h.advance(30.0)
    assert client.receive(h.take()) == [CloseConnection(1001, "idle timeout")]
    h.feed(client.send(CloseConnection(1001)))
    assert h.fin_sent and h.close_reason is CloseReason.IDLE_TIMEOUT


def test_handler_close_before_the_upgrade_just_closes():
    handler = Recorder()
    with Harness(handler, WebSocketCodec()) as h:
        handler.ws_close()
        h.run()
        assert h.fin_sent and h.take() == b""
        h.feed_eof()
        assert handler.closes() == []  # the WebSocket never opened


# ------------------------------------------------------------------ the message cap


@pytest.mark.parametrize("fragments", [1, 3])
def test_a_message_of_exactly_max_message_passes_and_one_byte_more_gets_1009(fragments):
    h, client, handler = upgraded(Recorder(echo=False), WebSocketCodec(max_message=300))
    sizes = [100] * 3 if fragments == 3 else [300]
    for i, size in enumerate(sizes):
        h.feed(client.send(BytesMessage(b"a" * size, message_finished=i == len(sizes) - 1)))
    assert handler.messages() == [b"a" * 300]
    sizes[-1] += 1
    for i, size in enumerate(sizes):
        h.feed(client.send(BytesMessage(b"b" * size, message_finished=i == len(sizes) - 1)))
    events = client.receive(h.take())
    assert [(e.code, e.reason) for e in events] == [
        (1009, "message of at least 301 bytes exceeds max_message 300")]
    assert handler.messages() == [b"a" * 300]
    assert handler.closes() == [(1009, "message of at least 301 bytes exceeds max_message 300")]
    assert h.close_reason is CloseReason.FRAME_TOO_LONG and h.fin_sent
    h.feed_eof()
    assert h.closed


def test_an_oversized_frame_is_refused_from_its_header_before_its_payload():
    h, client, handler = upgraded(codec=WebSocketCodec(max_message=1 << 20))
    header = client_frame(0x2, b"x" * (2 << 20))[:14]  # 8-byte length, mask: no payload yet
    h.feed(header)
    assert [e.code for e in client.receive(h.take())] == [1009]
    assert h.close_reason is CloseReason.FRAME_TOO_LONG and h.conn.recv_buffered == 0


def test_a_text_message_cap_counts_utf8_bytes():
    h, client, handler = upgraded(codec=WebSocketCodec(max_message=6))
    h.feed(client.send(TextMessage("€€")))  # 6 bytes, 2 characters
    assert handler.messages() == ["€€"]
    h.feed(client.send(TextMessage("€€a")))  # 7 bytes
    assert [e.code for e in client.receive(h.take()[len(encode_message("€€")):])] == [1009]


# ------------------------------------------------------------------ protocol errors


BAD_FRAMES = {
    "unmasked": client_frame(0x1, b"hi", masked=False),
    "reserved bit": client_frame(0x1, b"hi", rsv=0x40),
    "unknown opcode": client_frame(0x3, b"hi"),
    "continuation first": client_frame(0x0, b"hi"),
    "fragmented ping": client_frame(0x9, b"hi", fin=False),
    "control frame of 126 bytes (header only)": client_frame(0x9, b"p" * 126)[:2],
    "text while text is unfinished": client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"),
    "close with a 1-byte payload": client_frame(0x8, b"\x03"),
    "close with code 999": client_frame(0x8, struct.pack("!H", 999)),
    "non-minimal length": b"\x82\xfe\x00\x05" + b"\0\0\0\0" + b"12345",
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_a_protocol_error_fails_the_connection_with_1002_and_one_log_line(name, caplog):
    h, client, handler = upgraded(Recorder(echo=False))
    with caplog.at_level(logging.INFO, logger="handlers.websocket"):
        h.feed(BAD_FRAMES[name] + client.send(TextMessage("never read")))
    events = client.receive(h.take())
    assert [e.code for e in events] == [1002], events
    assert handler.messages() == [] and [c[0] for c in handler.closes()] == [1002]
    assert h.close_reason is CloseReason.PROTOCOL_ERROR and h.fin_sent
    lines = [r.getMessage() for r in caplog.records if r.name == "handlers.websocket"]
    assert len(lines) == 1 and "failing the connection with 1002" in lines[0]


def test_text_that_is_not_utf8_fails_with_1007():
    h, client, handler = upgraded()
    h.feed(client_frame(0x1, b"ok \xff"))
    assert [e.code for e in client.receive(h.take())] == [1007]
    assert h.close_reason is CloseReason.PROTOCOL_ERROR


def test_the_codec_raises_codec_errors_a_plain_handler_would_see():
    codec = WebSocketCodec(max_message=10)
    with Harness(WebSocketHandler(), codec) as h:  # for the ring
        ring = h.loop.hub.take_ring()
        ring.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(HandshakeError) as info:
            codec.maybe_take_frame(ring)
        assert info.value.status == 426
    codec = WebSocketCodec(max_message=10)
    ring.clear()
    ring.write(UPGRADE)
    assert isinstance(codec.maybe_take_frame(ring), Request)
    codec.encode(AcceptConnection())
    ring.write(client_frame(0x2, b"x" * 11))
    with pytest.raises(MessageTooBig):
        codec.maybe_take_frame(ring)
    codec = WebSocketCodec()
    ring.clear()
    ring.write(UPGRADE + client_frame(0x2, b"x", masked=False))
    codec.maybe_take_frame(ring)
    codec.encode(AcceptConnection())
    with pytest.raises(WebSocketError) as err:
        codec.maybe_take_frame(ring)
    assert err.value.code == 1002


# ------------------------------------------------------------------ HTTP refusals


@pytest.mark.parametrize("request_head, status, header", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426, b"Upgrade: websocket"),
    (b"GET /favicon.ico HTTP/1.0\r\n\r\n", 426, b"Upgrade: websocket"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, None),  # not even HTTP
    (UPGRADE.replace(b"GET", b"POST"), 400, None),
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), 426, b"Sec-WebSocket-Version: 13"),
    (UPGRADE.replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b""), 400, None),
    (b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\n\n", 400, None),
])
def test_a_request_that_is_no_websocket_upgrade_gets_an_http_error_and_a_close(
        request_head, status, header, caplog):
    handler = Recorder()
    with caplog.at_level(logging.INFO, logger="handlers.websocket"), \
            Harness(handler, WebSocketCodec()) as h:
        h.feed(request_head)
        answer = h.take()
        assert http_status(answer) == status, answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\nConnection: close" in head and body.startswith(b"%d: " % status)
        assert b"Content-Length: %d\r\n" % len(body) in head
        if header:
            assert b"\r\n" + header in head
        assert h.fin_sent and h.close_reason is CloseReason.PROTOCOL_ERROR
        assert handler.seen == [] and not handler.ws_open
        h.feed_eof()
        assert h.closed and handler.closes() == []
    assert [r.name for r in caplog.records if "upgrade refused" in r.getMessage()] == [
        "handlers.websocket"]


def test_a_wsproto_client_sees_the_refusal():
    client = Client()
    with Harness(Recorder(accept=False), WebSocketCodec()) as h:
        h.feed(client.request())
        events = client.receive(h.take())
        assert isinstance(events[0], RejectConnection) and events[0].status_code == 403
        assert events[1:] == [RejectData(b"403: refused\n", body_finished=False),
                              RejectData(b"", body_finished=True)]
        assert h.fin_sent


@pytest.mark.parametrize("cuts", [[], [1, 100, 200], list(range(0, 300, 7))])
def test_the_handshake_cap_is_exact_however_the_bytes_come(cuts):
    def head_of(size: int) -> bytes:
        pad = size - len(UPGRADE) - len(b"X-Pad: \r\n")
        return UPGRADE[:-2] + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"

    with Harness(Recorder(), WebSocketCodec(max_handshake=300)) as h:
        for piece in cut(head_of(300), cuts):
            h.feed(piece)
        assert h.take().startswith(b"HTTP/1.1 101 ")
    with Harness(Recorder(), WebSocketCodec(max_handshake=300)) as h:
        for piece in cut(head_of(301), cuts):
            h.feed(piece)
        assert http_status(h.take()) == 431
        assert h.close_reason is CloseReason.FRAME_TOO_LONG


def test_a_handshake_slower_than_the_frame_timeout_gets_408():
    with Harness(Recorder(), WebSocketCodec(), frame_timeout_s=5.0) as h:
        h.feed(UPGRADE[:20])
        h.advance(4.0)
        h.feed(UPGRADE[20:40])  # trickling bytes do not restart the clock
        h.advance(1.1)
        assert http_status(h.take()) == 408
        assert h.close_reason is CloseReason.FRAME_TIMEOUT


def test_a_frame_slower_than_the_frame_timeout_gets_1008():
    h, client, _ = upgraded(frame_timeout_s=5.0)
    h.feed(client.send(TextMessage("slow"))[:3])
    h.advance(5.1)
    assert [e.code for e in client.receive(h.take())] == [1008]
    assert h.close_reason is CloseReason.FRAME_TIMEOUT


# ------------------------------------------------------------------ sending


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_encode_message_frames_as_wsproto_does(size):
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(UPGRADE)
    list(server.events())
    server.send(AcceptConnection())
    data = bytes(range(256)) * (size // 256 + 1)
    assert encode_message(data[:size]) == server.send(BytesMessage(data[:size]))
    assert encode_message(memoryview(data[:size])) == server.send(BytesMessage(data[:size]))
    text = "é" * (size // 2)
    assert encode_message(text) == server.send(TextMessage(text))
    codec = WebSocketCodec()
    assert codec.encode(text) == encode_message(text)


def test_messages_sent_by_the_handler_reach_the_client_whole():
    h, client, handler = upgraded(Recorder(echo=False))
    assert handler.send_text("plain") and handler.send_bytes(bytearray(b"\x00\xff" * 40000))
    h.run()
    events = client.receive(h.take())
    assert [e.data for e in events] == ["plain", b"\x00\xff" * 40000]
    with pytest.raises(TypeError):
        handler.send_text(b"bytes")
    with pytest.raises(TypeError):
        handler.send_bytes("text")
    with pytest.raises(TypeError):
        h.conn.send(42)


def test_broadcast_message_frames_once_for_every_peer(monkeypatch):
    framed = []
    real = ws_module.encode_message
    monkeypatch.setattr(ws_module, "encode_message", lambda m: framed.append(m) or real(m))
    peers = [upgraded() for _ in range(3)]
    try:
        result = broadcast_message([h.conn for h, _, _ in peers], "to all")
        assert result.sent == 3 and framed == ["to all"]
        for h, client, _ in peers:
            h.run()
            assert client.receive(h.take()) == [TextMessage("to all")]
    finally:
        for h, _, _ in peers:
            h.close()


def test_the_codec_refuses_bad_limits():
    with pytest.raises(ValueError):
        WebSocketCodec(max_message=-1)
    with pytest.raises(ValueError):
        WebSocketCodec(max_handshake=10)
    assert WebSocketCodec(max_message=100).max_frame_bytes == 16384
