"""RespCodec (handlers/resp.py): every RESP2 type, any split, exact caps, refused garbage,
and a property test against an encoder written here, independently of the module's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resp import (NULL_ARRAY, NULL_BULK, ErrorReply, RespCodec, RespProtocolError,
                           RespTooLarge, SimpleString, array, bulk, encode, error, integer,
                           simple)
from reactor import Handler
from reactor.errors import CloseReason, CodecError, FrameTooLong
from reactor.pool import BufferPool
from reactor.ring import RingBuffer
from reactor.testing import Harness
from tests.unit.test_codecs import new_ring, split

# -- the reference: RESP2 as the protocol's description says it, written for these tests ----


def ref(value) -> bytes:
    """The wire bytes of ``value``, built by plain concatenation."""
    if value is NULL_BULK or value is None:
        return b"$-1\r\n"
    if value is NULL_ARRAY:
        return b"*-1\r\n"
    if isinstance(value, SimpleString):
        return b"+" + bytes(value) + b"\r\n"
    if isinstance(value, ErrorReply):
        return b"-" + bytes(value) + b"\r\n"
    if isinstance(value, bytes):
        return b"$" + str(len(value)).encode() + b"\r\n" + value + b"\r\n"
    if isinstance(value, int):
        return b":" + str(value).encode() + b"\r\n"
    assert isinstance(value, list)
    return b"*" + str(len(value)).encode() + b"\r\n" + b"".join(ref(v) for v in value)


def tagged(value):
    """``value`` with the type of every part made explicit, so == tells them apart
    (SimpleString(b"OK") == b"OK" for bytes' equality)."""
    if isinstance(value, list):
        return ("array", [tagged(v) for v in value])
    return (type(value).__name__, value if not isinstance(value, bytes) else bytes(value))


def feed(codec: RespCodec, pieces, ring: RingBuffer | None = None):
    """Frames from ``pieces`` through maybe_take_frame, fed one by one: (frames, error)."""
    ring = ring if ring is not None else new_ring()
    frames = []
    try:
        for piece in pieces:
            ring.write(piece)
            while (frame := codec.maybe_take_frame(ring)) is not None:
                frames.append(frame)
    except CodecError as exc:
        return frames, exc
    return frames, None


def feed_batches(codec: RespCodec, pieces):
    """The same through maybe_take_batch (wire bytes) and frames_of: (frames, error)."""
    ring = new_ring()
    frames = []
    try:
        for piece in pieces:
            ring.write(piece)
            while (data := codec.maybe_take_batch(ring)) is not None:
                frames += codec.frames_of(data)
    except CodecError as exc:
        return frames, exc
    return frames, None


def feed_flat(codec: RespCodec, pieces):
    """The flat path as reading.py runs it: each piece lands behind the partial frame kept
    from before, frames_end cuts, frames_of decodes what it cut: (frames, error)."""
    rest = b""
    frames = []
    for piece in pieces:
        buf = bytearray(rest + piece)
        try:
            cut = codec.frames_end(buf, len(rest), len(buf))
        except CodecError as exc:
            frames += codec.frames_of(bytes(buf[:exc.valid_prefix]))
            return frames, exc
        frames += codec.frames_of(bytes(buf[:cut]))
        rest = bytes(buf[cut:])
    return frames, None


def every_way(make, data: bytes, cuts=None):
    """(frames, error class, error message) from each path and each split of ``data``
    asked for: byte by byte, at every single cut, and at ``cuts``."""
    splits = [[data], [data[i:i + 1] for i in range(len(data))]]
    if cuts is None:
        splits += [[data[:i], data[i:]] for i in range(1, len(data))]
    else:
        splits.append(split(data, cuts))
    results = set()
    for pieces in splits:
        for path in (feed, feed_batches, feed_flat):
            frames, exc = path(make(), pieces)
            results.add((repr([tagged(f) for f in frames]),
                         type(exc).__name__ if exc else None, str(exc) if exc else None))
    return results


def decode_one(data: bytes, **caps):
    """The one outcome of ``data`` (client mode by default), the same whatever the path or split."""
    caps.setdefault("requests", False)
    results = every_way(lambda: RespCodec(**caps), data)
    assert len(results) == 1, results
    return results.pop()


def frames_of(data: bytes, **caps):
    (frames, error_name, _), = [decode_one(data, **caps)]
    assert error_name is None
    return frames


def refused(data: bytes, error_class=RespProtocolError, **caps) -> str:
    """``data`` is refused, the same way by every path and split; the one-line message."""
    frames, name, message = decode_one(data, **caps)
    assert name == error_class.__name__, (name, message)
    assert "\n" not in message and "\r" not in message
    return message


# -- every type ----------------------------------------------------------------------------


def test_every_resp2_type_decodes_in_client_mode():
    data = (b"+OK\r\n-ERR wrong\r\n:0\r\n:-42\r\n:9223372036854775807\r\n"
            b":-9223372036854775808\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n"
            b"$4\r\na\r\nb\r\n*0\r\n*-1\r\n*3\r\n:1\r\n*2\r\n+x\r\n$-1\r\n*0\r\n")
    expected = [SimpleString(b"OK"), ErrorReply(b"ERR wrong"), 0, -42, (1 << 63) - 1, -(1 << 63),
                b"hello", b"", NULL_BULK, b"a\r\nb", [], NULL_ARRAY,
                [1, [SimpleString(b"x"), NULL_BULK], []]]
    assert frames_of(data) == repr([tagged(v) for v in expected])


def test_requests_are_lists_of_bytes_and_inline_commands_split_on_spaces():
    data = (b"*3\r\n$3\r\nSET\r\n$4\r\nk\r\nv\r\n$0\r\n\r\n"  # a bulk holding CRLF
            b"PING\r\n"
            b"  set\tkey   value  \n"  # LF alone ends an inline command too
            b"\r\n   \r\n*0\r\n*-1\r\n"  # empty commands: nothing to deliver (as redis)
            b"ECHO \"a b\\x41\\n\" 'it''s' ''\r\n"
            b"*1\r\n$4\r\nQUIT\r\n")
    expected = [[b"SET", b"k\r\nv", b""], [b"PING"], [b"set", b"key", b"value"],
                [b"ECHO", b"a bA\n", b"it", b"s", b""]]
    frames, name, _ = decode_one(data, requests=True)
    assert name == "RespProtocolError"  # 'it''s': a closing quote must end its word
    assert frames == repr([tagged(v) for v in expected[:3]])
    data = data.replace(b"'it''s'", b"'it\\'s'")
    expected[3] = [b"ECHO", b"a bA\n", b"it's", b""]
    assert frames_of(data, requests=True) == repr([tagged(v) for v in expected + [[b"QUIT"]]])


def test_a_frame_is_never_none_so_nulls_are_sentinels():
    codec, ring = RespCodec(requests=False), new_ring()
    ring.write(b"$-1\r\n*-1\r\n")
    assert codec.maybe_take_frame(ring) is NULL_BULK
    assert codec.maybe_take_frame(ring) is NULL_ARRAY
    assert codec.maybe_take_frame(ring) is None
    assert not NULL_BULK and not NULL_ARRAY and repr(NULL_BULK) == "NULL_BULK"


# -- requests: what redis-server refuses ----------------------------------------------------


@pytest.mark.parametrize("data, words", [
    (b"*1\r\n:1\r\n", "expected '$', got ':'"),
    (b"*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n", "expected '$', got '*'"),
    (b"*1\r\n*0\r\n", "expected '$', got '*'"),
    (b"*1\r\n$-1\r\n", "invalid bulk length '-1'"),
    (b"*1\r\n$-5\r\n", "invalid bulk length '-5'"),
    (b"*-2\r\n", "invalid multibulk length '-2'"),
    (b"*1\r\n+OK\r\n", "expected '$', got '+'"),
    (b"SET a \"b\r\n", "unbalanced quotes in request"),
    (b"SET a \"b\"c\r\n", "unbalanced quotes in request"),
])
def test_requests_refuse_what_redis_refuses(data, words):
    assert refused(data, requests=True) == words


# -- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("data, words", [
    (b"?\r\n", "invalid type byte '?'"),
    (b"\r\n", "invalid type byte '\\r'"),
    (b"$x\r\n", "invalid bulk length 'x'"),
    (b"$\r\n", "invalid bulk length ''"),
    (b"$+3\r\nabc\r\n", "invalid bulk length '+3'"),
    (b"$03\r\nabc\r\n", "invalid bulk length '03'"),
    (b"$ 3\r\nabc\r\n", "invalid bulk length ' 3'"),
    (b"$3 \r\nabc\r\n", "invalid bulk length '3 '"),
    (b"$-5\r\n", "invalid bulk length '-5'"),
    (b"$-0\r\n", "invalid bulk length '-0'"),
    (b"*-5\r\n", "invalid multibulk length '-5'"),
    (b"*1x\r\n", "invalid multibulk length '1x'"),
    (b"$3\r\nabcd\r\n", "expected CRLF after a bulk string of 3 bytes, got 'd\\r'"),
    (b"$3\r\nabc\n\n", "expected CRLF after a bulk string of 3 bytes, got '\\n\\n'"),
    (b"$3\n\rabc\r\n", "invalid bulk length '3\\n\\rabc'"),
    (b"$1111111111111111111111111111", "invalid bulk length '11111111111111111111111'..."),
    (b":12a\r\n", "invalid integer '12a'"),
    (b":+1\r\n", "invalid integer '+1'"),
    (b":9223372036854775808\r\n", "invalid integer '9223372036854775808'"),
    (b":\r\n", "invalid integer ''"),
    (b"+a\rb\r\n", "CR or LF inside a line: 'a\\rb'"),
    (b"-a\nb\r\n", "CR or LF inside a line: 'a\\nb'"),
])
def test_malformed_input_is_a_codec_error_with_a_one_line_message(data, words):
    assert refused(data) == words
    assert RespProtocolError.reason is CloseReason.PROTOCOL_ERROR


def test_frames_before_bad_bytes_are_delivered_first():
    data = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$-5\r\n*1\r\n$4\r\nPING\r\n"
    frames, name, message = decode_one(data, requests=True)
    assert frames == repr([tagged([b"PING"])] * 2)
    assert (name, message) == ("RespProtocolError", "invalid bulk length '-5'")
    codec = RespCodec()
    with pytest.raises(RespProtocolError) as info:
        codec.frames_end(bytearray(data), 0, len(data))
    assert info.value.valid_prefix == 28
    # The ring: the good frames in one batch, then the error, again on every call.
    ring = new_ring()
    ring.write(data)
    assert codec.maybe_take_batch(ring) == data[:28]
    for _ in range(2):
        with pytest.raises(RespProtocolError):
            codec.maybe_take_batch(ring)
        with pytest.raises(RespProtocolError):
            codec.maybe_take_frame(ring)


# -- the caps, exact -------------------------------------------------------------------------


def test_max_bulk_exactly_and_one_past_refused_at_the_header():
    ok = b"*1\r\n$16\r\n" + b"b" * 16 + b"\r\n"
    assert frames_of(ok, requests=True, max_bulk=16) == repr([tagged([b"b" * 16])])
    # Refused as soon as the header is here: the 17 bytes are never awaited.
    message = refused(b"*1\r\n$17\r\n", RespTooLarge, requests=True, max_bulk=16)
    assert message == "bulk length of 17 exceeds the limit 16"
    assert refused(b"$17\r\n", RespTooLarge, max_bulk=16) == message


def test_max_elements_exactly_and_one_past():
    ok = b"*4\r\n" + b"$1\r\nx\r\n" * 4
    assert frames_of(ok, requests=True, max_elements=4) == repr([tagged([b"x"] * 4)])
    assert refused(b"*5\r\n", RespTooLarge, requests=True, max_elements=4) == \
        "array length of 5 exceeds the limit 4"
    assert refused(b"*1\r\n*5\r\n", RespTooLarge, max_elements=4) == \
        "array length of 5 exceeds the limit 4"


def test_max_depth_exactly_and_one_past():
    ok = b"*1\r\n" * 3 + b":1\r\n"
    assert frames_of(ok, max_depth=3) == repr([tagged([[[1]]])])
    assert refused(b"*1\r\n" * 4, RespTooLarge, max_depth=3) == \
        "nesting depth of 4 exceeds the limit 3"
    assert frames_of(b"*2\r\n*1\r\n*0\r\n*1\r\n*-1\r\n", max_depth=2) == \
        repr([tagged([[[]], [NULL_ARRAY]])])  # empty and null arrays add no depth


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_max_inline_exactly_and_one_past(end):
    assert frames_of(b"PING 56789" + end, max_inline=10, requests=True) == \
        repr([tagged([b"PING", b"56789"])])
    message = refused(b"PING 567890" + end, RespTooLarge, max_inline=10, requests=True)
    assert message == "inline request longer than the limit of 10 bytes"


def test_max_inline_refuses_as_soon_as_the_line_cannot_fit():
    codec, ring = RespCodec(max_inline=10), new_ring()
    ring.write(b"0123456789\r")  # 10 bytes and a CR: its LF may come yet
    assert codec.maybe_take_frame(ring) is None
    codec, ring = RespCodec(max_inline=10), new_ring()
    ring.write(b"0123456789x")  # 11 bytes and no LF: too long whatever comes
    with pytest.raises(RespTooLarge, match="inline request longer than the limit of 10 bytes"):
        codec.maybe_take_frame(ring)


def test_max_inline_bounds_simple_strings_in_client_mode():
    assert frames_of(b"+" + b"s" * 10 + b"\r\n", max_inline=10) == \
        repr([tagged(SimpleString(b"s" * 10))])
    assert refused(b"-" + b"e" * 11 + b"\r\n", RespTooLarge, max_inline=10) == \
        "line longer than the limit of 10 bytes"
    codec, ring = RespCodec(requests=False, max_inline=10), new_ring()
    ring.write(b"+" + b"s" * 12)
    with pytest.raises(RespTooLarge, match="line longer than the limit of 10 bytes"):
        codec.maybe_take_frame(ring)


def test_max_frame_bytes_exactly_and_one_past():
    ok = b"*1\r\n$19\r\n" + b"f" * 19 + b"\r\n"
    assert len(ok) == 30
    assert frames_of(ok, requests=True, max_frame_bytes=30) == repr([tagged([b"f" * 19])])
    # Known from the header: the payload is not awaited.
    message = refused(b"*1\r\n$20\r\n", RespTooLarge, requests=True, max_frame_bytes=30)
    assert message == "frame longer than the limit of 30 bytes"
    # An array of small elements passes the cap as the elements arrive.
    many = b"*9\r\n" + b"$1\r\nx\r\n" * 9
    assert refused(many, RespTooLarge, requests=True, max_frame_bytes=30) == message
    assert frames_of(b"x" * 28 + b"\r\n", requests=True, max_frame_bytes=30) == \
        repr([tagged([b"x" * 28])])
    assert refused(b"x" * 29 + b"\r\n", RespTooLarge, requests=True, max_frame_bytes=30) \
        == message


def test_max_frame_bytes_counts_headers_and_lines_too():
    message = "frame longer than the limit of 5 bytes"
    assert refused(b"*1\r\n$1\r\nx\r\n", RespTooLarge, requests=True, max_frame_bytes=5) \
        == message
    assert refused(b"+hello\r\n", RespTooLarge, max_frame_bytes=5) == message
    assert frames_of(b"+hel\r\n", max_frame_bytes=6) == repr([tagged(SimpleString(b"hel"))])


def test_caps_are_frame_too_long_for_the_connection():
    exc = RespTooLarge("bulk length", 17, 16)
    assert isinstance(exc, FrameTooLong) and isinstance(exc, RespProtocolError)
    assert exc.reason is CloseReason.FRAME_TOO_LONG and (exc.size, exc.limit) == (17, 16)


@pytest.mark.parametrize("cap", ["max_bulk", "max_elements", "max_depth", "max_inline",
                                 "max_frame_bytes"])
def test_caps_must_be_positive(cap):
    with pytest.raises(ValueError, match=cap):
        RespCodec(**{cap: 0})


# -- incremental: no rescans ------------------------------------------------------------------


class CountingRing(RingBuffer):
    """A ring that counts the bytes copied out of it."""

    def __init__(self) -> None:
        super().__init__(BufferPool(4096, 64))
        self.copied = 0

    def peek(self, n: int, offset: int = 0) -> bytes:
        self.copied += n
        return super().peek(n, offset)


def test_a_large_bulk_in_many_pieces_is_copied_out_once():
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = b"*2\r\n$3\r\nSET\r\n$%d\r\n" % len(payload) + payload + b"\r\n"
    codec, ring = RespCodec(), CountingRing()
    for i in range(0, len(data), 1000):
        ring.write(data[i:i + 1000])
        frame = codec.maybe_take_frame(ring)
        assert frame is None or i + 1000 >= len(data)
    assert frame == [b"SET", payload]
    assert ring.copied < 1.1 * len(data)


def test_a_large_array_in_small_pieces_is_parsed_once():
    data = b"*20000\r\n" + b"$1\r\nx\r\n" * 20000
    codec, ring = RespCodec(), CountingRing()
    frames = []
    for i in range(0, len(data), 7):  # most cuts fall inside an element
        ring.write(data[i:i + 7])
        if (frame := codec.maybe_take_frame(ring)) is not None:
            frames.append(frame)
    assert frames == [[b"x"] * 20000]
    assert ring.copied < 3 * len(data)


def test_take_remainder_starts_afresh():
    codec, ring = RespCodec(), new_ring()
    ring.write(b"*2\r\n$1\r\na\r\n$5\r\nbc")
    assert codec.maybe_take_frame(ring) is None
    assert codec.take_remainder(ring) == b"*2\r\n$1\r\na\r\n$5\r\nbc"
    ring.write(b"*1\r\n$1\r\nz\r\n")
    assert codec.maybe_take_frame(ring) == [b"z"]


def test_frames_of_reparses_bytes_it_was_not_given_by_frames_end():
    codec = RespCodec()
    a = b"*1\r\n$1\r\na\r\n"
    assert codec.frames_end(bytearray(a), 0, len(a)) == len(a)
    assert codec.frames_of(b"*1\r\n$1\r\nb\r\n") == [[b"b"]]
    assert codec.frames_of(a) == [[b"a"]]
    assert RespCodec(requests=False).frames_of(b"*1\r\n$1\r\nb\r\n") == [[b"b"]]
    with pytest.raises(RespProtocolError, match="incomplete"):
        codec.frames_of(b"*1\r\n$1\r\n")


# -- encoding ------------------------------------------------------------------------------


def test_encoding_helpers():
    assert simple(b"OK") == simple("OK") == b"+OK\r\n"
    assert error("ERR no") == b"-ERR no\r\n"
    assert integer(-7) == b":-7\r\n"
    assert bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n" and bulk(None) == b"$-1\r\n"
    assert bulk("é") == b"$2\r\n\xc3\xa9\r\n"
    assert array(None) == b"*-1\r\n" and array([]) == b"*0\r\n"
    assert array([b"a", 1, None, [SimpleString(b"x")]]) == \
        b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n+x\r\n"
    assert array(iter([b"x"])) == b"*1\r\n$1\r\nx\r\n"
    assert encode(True) == b":1\r\n" and encode((b"a",)) == b"*1\r\n$1\r\na\r\n"
    assert encode(bytearray(b"ab")) == encode(memoryview(b"ab")) == b"$2\r\nab\r\n"
    assert encode(NULL_ARRAY) == b"*-1\r\n" and encode(NULL_BULK) == b"$-1\r\n"
    assert encode(type("Int", (int,), {})(3)) == b":3\r\n"  # an int subclass (IntEnum...)
    for bad in (b"a\r\n", "b\n", b"\r"):
        with pytest.raises(ValueError):
            simple(bad)
        with pytest.raises(ValueError):
            error(bad)
    with pytest.raises(ValueError):
        encode([SimpleString(b"a\nb")])
    with pytest.raises(TypeError, match="float"):
        encode(1.5)


def test_encode_into_a_ring_writes_the_same_bytes():
    codec = RespCodec()
    for value in ([b"SET", b"k", b"v"], SimpleString(b"OK"), b"x" * 100_000, 5, None):
        out = new_ring()
        codec.encode_into(value, out)
        assert out.take(len(out)) == codec.encode(value) == ref(value)


# -- properties: the module against the reference ------------------------------------------

line_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
# Bulks often holding CRLF, headers and type bytes: what a token-splitting parser must survive.
bulk_bytes = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"$3", b"*1", b"a", b"xyz", b"",
                                       b"\x00\xff", b"+OK"]), max_size=6).map(b"".join) \
    | st.binary(max_size=40)
scalars = st.one_of(
    bulk_bytes, line_bytes.map(SimpleString), line_bytes.map(ErrorReply),
    st.integers(-(1 << 63), (1 << 63) - 1), st.just(NULL_BULK), st.just(NULL_ARRAY))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=25)
chunkings = st.lists(st.integers(0, 4096), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=8), chunkings)
def test_decoding_any_chunking_gives_back_the_values(vals, cuts):
    data = b"".join(ref(v) for v in vals)
    want = (repr([tagged(v) for v in vals]), None, None)
    assert every_way(lambda: RespCodec(requests=False), data, cuts) == {want}


@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_matches_the_reference(value):
    assert encode(value) == ref(value)


words = st.binary(min_size=1, max_size=12).filter(lambda w: not set(w) & set(b" \t\r\n\x0b\x0c\"'"))
commands = st.lists(bulk_bytes, min_size=1, max_size=6).map(lambda c: (c, ref(c))) | \
    st.lists(words, min_size=1, max_size=4).filter(lambda w: w[0][:1] != b"*").map(
        lambda w: (w, b" ".join(w) + b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, min_size=1, max_size=30), chunkings)
def test_requests_decode_the_same_on_every_path(cmds, cuts):
    # Many same-shape commands in a row take the fast path's runs; bulks holding CRLF,
    # inline commands and partial frames take it apart.
    data = b"".join(wire for _, wire in cmds)
    want = (repr([tagged(c) for c, _ in cmds]), None, None)
    assert every_way(RespCodec, data, cuts) == {want}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), st.integers(0, 40), chunkings)
def test_runs_of_same_shape_commands(n, size, cuts):  # longer runs than the fast path takes
    cmds = [[b"SET", b"key:%012d" % i, b"v" * size] for i in range(n)]
    cmds += [[b"GET", b"key:%012d" % i] for i in range(n)]
    data = b"".join(ref(c) for c in cmds)
    assert every_way(RespCodec, data, cuts) == {(repr([tagged(c) for c in cmds]), None, None)}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), st.integers(0, 40), chunkings)
def test_runs_of_the_same_inline_command(n, blank, cuts):
    data = b"PING\r\n" * n + b"\r\n" * blank + b"ECHO a\r\n" * n + b"PING\r\n"
    cmds = [[b"PING"]] * n + [[b"ECHO", b"a"]] * n + [[b"PING"]]
    assert every_way(RespCodec, data, cuts) == {(repr([tagged(c) for c in cmds]), None, None)}
    codec = RespCodec()
    frames = codec.frames_of(data)
    frames[0].append(b"x")  # each frame is a list of its own
    assert frames[1:] == cmds[1:]


def test_a_run_of_one_shape_with_a_bulk_holding_crlf_is_parsed_the_slow_way():
    cmds = [[b"SET", b"k", b"aa"], [b"SET", b"k", b"\r\n"], [b"SET", b"k", b"aa"]]
    data = b"".join(ref(c) for c in cmds)
    assert every_way(RespCodec, data) == {(repr([tagged(c) for c in cmds]), None, None)}


garbage = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"*1", b"*2", b"*0", b"*-1", b"$1",
                                     b"$3", b"$-1", b"$-5", b":1", b"+a", b"-e", b"a", b" ",
                                     b"\"", b"'", b"\\", b"0", b"9" * 20]),
                   max_size=40).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=500, deadline=None)
@given(garbage, chunkings, st.booleans())
def test_garbage_gives_the_same_frames_and_error_on_every_path_and_split(data, cuts, requests):
    def make():
        return RespCodec(requests=requests, max_bulk=64, max_elements=8, max_inline=64,
                         max_depth=4, max_frame_bytes=100)

    outcomes = every_way(make, data, cuts)
    assert len(outcomes) == 1, outcomes
    (_, name, message), = outcomes
    assert name in (None, "RespProtocolError", "RespTooLarge")
    assert message is None or ("\n" not in message and "\r" not in message)


@settings(max_examples=200, deadline=None)
@given(garbage, chunkings)
def test_the_fast_path_agrees_with_the_parser_on_garbage(data, cuts):
    # Default caps: the token fast path runs (a small max_frame_bytes turns it off).
    assert len(every_way(RespCodec, data, cuts)) == 1


# -- on a connection ------------------------------------------------------------------------


class Replier(Handler):
    """Answers each request with its words' lengths, a batch at a time."""

    def __init__(self) -> None:
        self.decoder = RespCodec()

    def on_batch(self, conn, data):
        conn.write(b"".join(array([len(w) for w in f]) for f in self.decoder.frames_of(data)))

    def on_codec_error(self, conn, exc):
        conn.write(error(f"ERR Protocol error: {exc}"))
        conn.close(exc.reason)


def test_on_a_connection_byte_by_byte_with_a_large_frame_through_the_ring():
    # Large partial frames leave the flat buffer for a ring and come back (reading.py):
    # the codec's state must follow.
    cmds = [[b"SET", b"k", b"v" * 5000], [b"PING"], [b"ECHO", b"x" * 3000, b"y"]] * 2
    data = b"".join(ref(c) for c in cmds)
    want = b"".join(array([len(w) for w in c]) for c in cmds)
    with Harness(Replier(), RespCodec()) as h:
        for i in range(0, len(data), 700):
            h.feed(data[i:i + 700])
        assert h.take() == want
        h.feed(b"*1\r\n$99999999999\r\n")
        assert h.take() == b"-ERR Protocol error: bulk length of 99999999999 exceeds the " \
                           b"limit 536870912\r\n"
        assert h.close_reason is CloseReason.FRAME_TOO_LONG
