"""LineCodec and LengthPrefixedCodec: chunking never changes the frames or the error."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.length_prefixed import LengthPrefixedCodec
from handlers.line import LineCodec
from reactor.errors import CodecError, FrameTooLong, LineTooLong
from reactor.pool import BufferPool
from reactor.ring import RingBuffer

# Small chunks so frames span chunks; few of them so writes overflow to the heap.
CHUNK = 64


def new_ring() -> RingBuffer:
    return RingBuffer(BufferPool(CHUNK, 4))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode_all(codec, pieces, take=None):
    """Feed ``pieces`` one by one, taking frames after each.

    Returns (frames, error class or None, remainder at EOF or None).
    """
    take = take or codec.maybe_take_frame
    ring = new_ring()
    frames = []
    try:
        for piece in pieces:
            ring.write(piece)
            while (frame := take(ring)) is not None:
                frames.append(frame)
    except CodecError as e:
        return frames, type(e), None
    rest = codec.take_remainder(ring)
    assert len(ring) == 0 and ring.chunks_held == 0
    return frames, None, rest


chunkings = st.lists(st.integers(0, 4096), max_size=20)
# Bytes with plenty of newlines and some \r, NUL and invalid UTF-8.
line_bytes = st.lists(
    st.sampled_from([b"\n", b"\r\n", b"a", b"bc", b"\x00", b"\xff\xfe", b"x" * 30]), max_size=120
).map(b"".join)


# -- LineCodec --------------------------------------------------------------------


@pytest.mark.parametrize("max_line", [0, -1])
def test_line_codec_rejects_bad_max_line(max_line):
    with pytest.raises(ValueError, match=str(max_line)):
        LineCodec(max_line)


@settings(max_examples=300)
@given(line_bytes | st.binary(max_size=600), chunkings, st.integers(1, 80))
def test_line_codec_ignores_chunking(data, cuts, max_line):
    whole = decode_all(LineCodec(max_line), [data])
    assert decode_all(LineCodec(max_line), split(data, cuts)) == whole
    assert decode_all(LineCodec(max_line), [data[i:i + 1] for i in range(len(data))]) == whole


@settings(max_examples=300)
@given(line_bytes | st.binary(max_size=600), chunkings, st.integers(1, 80))
def test_line_codec_matches_a_simple_model(data, cuts, max_line):
    frames, error, rest = decode_all(LineCodec(max_line), split(data, cuts))
    lines = data.split(b"\n")
    expected, tail = lines[:-1], lines[-1]
    for k, line in enumerate(expected):
        if len(line) + 1 > max_line:
            assert (frames, error) == (expected[:k], LineTooLong)
            return
    if len(tail) >= max_line:
        assert (frames, error) == (expected, LineTooLong)
    else:
        assert (frames, error, rest) == (expected, None, tail)


@given(st.binary(max_size=600), chunkings, st.integers(1, 80))
def test_line_codec_garbage_gives_frames_or_codec_error(data, cuts, max_line):
    decode_all(LineCodec(max_line), split(data, cuts))  # anything else propagates


@given(st.integers(1, 200), chunkings)
def test_line_of_exactly_max_line_is_accepted(max_line, cuts):
    line = b"x" * (max_line - 1)
    data = line + b"\n" + line + b"\n"
    assert decode_all(LineCodec(max_line), split(data, cuts)) == ([line, line], None, b"")


@given(st.integers(1, 200), chunkings)
def test_line_one_byte_over_max_line_is_refused(max_line, cuts):
    data = b"ok\n"[-min(3, max_line):] + b"x" * max_line + b"\n"
    frames, error, _ = decode_all(LineCodec(max_line), split(data, cuts))
    assert error is LineTooLong
    assert frames == ([b"ok\n"[-min(3, max_line):-1]])


def test_line_too_long_carries_the_size():
    codec, ring = LineCodec(10), new_ring()
    ring.write(b"x" * 14 + b"\nmore")
    with pytest.raises(LineTooLong) as info:
        codec.maybe_take_frame(ring)
    assert (info.value.size, info.value.limit) == (15, 10)
    assert str(info.value) == "line of 15 bytes exceeds max_line 10"
    codec, ring = LineCodec(10), new_ring()
    ring.write(b"x" * 10)
    with pytest.raises(LineTooLong) as info:
        codec.maybe_take_frame(ring)
    assert (info.value.size, info.value.limit) == (11, 10)
    assert str(info.value) == "line of at least 11 bytes exceeds max_line 10"
    assert info.value.reason.value == "line_too_long"


def test_line_codec_keeps_cr_nul_and_invalid_utf8():
    codec, ring = LineCodec(), new_ring()
    ring.write(b"a\r\n\x00\xff\xfe\r\r\n\n\r")
    frames = [codec.maybe_take_frame(ring) for _ in range(4)]
    assert frames == [b"a\r", b"\x00\xff\xfe\r\r", b"", None]
    assert codec.take_remainder(ring) == b"\r"
    assert codec.take_remainder(ring) == b""


def test_line_codec_scans_a_slow_line_once():
    codec, ring = LineCodec(1 << 16), new_ring()
    for _ in range(1000):
        ring.write(b"z")
        assert codec.maybe_take_frame(ring) is None
    assert ring.scan == 1000  # the offset lives in the ring: the codec keeps no state
    ring.write(b"\n")
    assert codec.maybe_take_frame(ring) == b"z" * 1000
    assert ring.scan == 0


def test_one_line_codec_serves_many_rings():
    codec, a, b = LineCodec(10), new_ring(), new_ring()
    a.write(b"aaa")
    b.write(b"bb\nb")
    assert codec.maybe_take_frame(a) is None
    assert codec.maybe_take_batch(b) == b"bb\n"
    a.write(b"a\n")
    b.write(b"\n")
    assert codec.maybe_take_frame(a) == b"aaaa"
    assert codec.maybe_take_frame(b) == b"b"
    a.write(b"x" * 10)  # scan state of a (emptied) ring starts over
    with pytest.raises(LineTooLong):
        codec.maybe_take_batch(a)


@given(st.lists(st.binary(max_size=100).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       chunkings)
def test_line_encode_decode_round_trips(msgs, cuts):
    codec = LineCodec(101)
    data = b"".join(codec.encode(m) for m in msgs)
    out = new_ring()
    for m in msgs:
        codec.encode_into(m, out)
    assert out.take(len(out)) == data
    assert decode_all(LineCodec(101), split(data, cuts)) == (msgs, None, b"")


def test_line_encode_refuses_embedded_newline():
    codec = LineCodec()
    assert codec.encode(bytearray(b"ab")) == b"ab\n"
    assert codec.encode(memoryview(b"ab")) == b"ab\n"
    with pytest.raises(ValueError):
        codec.encode(b"a\nb")
    with pytest.raises(ValueError):
        codec.encode_into(memoryview(b"a\n"), new_ring())


@settings(max_examples=300)
@given(line_bytes | st.binary(max_size=600), chunkings, st.integers(1, 80))
def test_line_batch_agrees_with_per_frame(data, cuts, max_line):
    for pieces in split(data, cuts), [data[i:i + 1] for i in range(len(data))]:
        frames, error, rest = decode_all(LineCodec(max_line), pieces)
        codec = LineCodec(max_line)
        batches, berror, brest = decode_all(codec, pieces, take=codec.maybe_take_batch)
        assert all(batch.endswith(b"\n") for batch in batches)
        assert b"".join(batches) == b"".join(f + b"\n" for f in frames)
        assert (berror, brest) == (error, rest)


@settings(max_examples=200)
@given(line_bytes, chunkings, st.integers(1, 80), st.lists(st.booleans(), min_size=1))
def test_line_batch_and_frame_calls_mix(data, cuts, max_line, use_batch):
    # Both paths share the resume offset; alternating between them loses nothing.
    expected = decode_all(LineCodec(max_line), [data])
    codec, ring = LineCodec(max_line), new_ring()
    got, error, choice = [], None, itertools.cycle(use_batch)
    try:
        for piece in split(data, cuts):
            ring.write(piece)
            while True:
                if next(choice):
                    batch = codec.maybe_take_batch(ring)
                    if batch is None:
                        break
                    got += batch.split(b"\n")[:-1]
                else:
                    frame = codec.maybe_take_frame(ring)
                    if frame is None:
                        break
                    got.append(frame)
    except LineTooLong:
        error = LineTooLong
    assert (got, error) == expected[:2]


def flat_decode(codec, pieces, flat=bytearray):
    """Feed ``pieces`` the way Connection._read_flat does: the partial line kept from
    before, then the new bytes, in one flat buffer; frames_end says where to cut.

    Returns (batches, (error class, size) or None, partial line at EOF or None)."""
    rest, batches = b"", []
    for piece in pieces:
        buf = flat(rest + piece)
        try:
            cut = codec.frames_end(buf, len(rest), len(buf))
        except CodecError as e:
            if e.valid_prefix:
                batches.append(bytes(buf[:e.valid_prefix]))
            return batches, (type(e), e.size), None
        if cut:
            batches.append(bytes(buf[:cut]))
        rest = bytes(buf[cut:])
    return batches, None, rest


@settings(max_examples=300)
@given(line_bytes | st.binary(max_size=600), chunkings, st.integers(1, 80),
       st.sampled_from([bytes, bytearray]))
def test_line_frames_end_agrees_with_the_ring_batch(data, cuts, max_line, flat):
    for pieces in split(data, cuts), [data[i:i + 1] for i in range(len(data))]:
        codec, ring = LineCodec(max_line), new_ring()
        batches, error = [], None
        try:
            for piece in pieces:
                ring.write(piece)
                while (batch := codec.maybe_take_batch(ring)) is not None:
                    batches.append(batch)
        except LineTooLong as e:
            error = (LineTooLong, e.size)
        rest = None if error else codec.take_remainder(ring)
        got, ferror, frest = flat_decode(LineCodec(max_line), pieces, flat)
        assert b"".join(got) == b"".join(batches)
        assert (ferror, frest) == (error, rest)


def test_line_frames_end_is_stateless_and_cuts_after_the_last_newline():
    codec = LineCodec(6)
    buf = bytearray(b"ab\ncd\nef")
    assert codec.frames_end(buf, 0, len(buf)) == 6
    assert codec.frames_end(buf, 0, len(buf)) == 6  # nothing consumed, nothing remembered
    assert codec.frames_end(buf, 0, 2) == 0
    assert codec.frames_end(b"12345\n", 0, 6) == 6  # exactly max_line, newline included
    with pytest.raises(LineTooLong) as info:
        codec.frames_end(b"123456\n", 0, 7)  # one byte more
    assert (info.value.size, info.value.valid_prefix) == (7, 0)
    with pytest.raises(LineTooLong) as info:  # good lines first: where the bad one starts
        codec.frames_end(b"a\nb\n" + b"x" * 20, 0, 24)
    assert info.value.valid_prefix == 4 and info.value.size >= 7
    # A long buffer of short lines: every window step keeps the cut exact.
    data = b"".join(b"%d\n" % i for i in range(500)) + b"tail"
    assert codec.frames_end(data, 0, len(data)) == len(data) - 4


def test_line_batch_returns_good_lines_before_an_oversized_one():
    codec, ring = LineCodec(5), new_ring()
    ring.write(b"ab\ncd\n" + b"x" * 9 + b"\n")
    assert codec.maybe_take_batch(ring) == b"ab\ncd\n"
    with pytest.raises(LineTooLong) as info:
        codec.maybe_take_batch(ring)
    assert info.value.size == 10
    assert LineCodec(5).maybe_take_batch(new_ring()) is None


def test_line_batch_resumes_exactly_where_it_stopped():
    codec, ring = LineCodec(10), new_ring()
    ring.write(b"a\nb")
    assert codec.maybe_take_batch(ring) == b"a\n"
    ring.write(b"\n")  # the very byte after the scanned part
    assert codec.maybe_take_batch(ring) == b"b\n"


def test_line_batch_spans_many_windows():
    codec, ring = LineCodec(8), new_ring()
    data = b"".join(b"%d\n" % i for i in range(500))
    ring.write(data)
    assert codec.maybe_take_batch(ring) == data
    assert ring.chunks_held == 0


# -- LengthPrefixedCodec --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header_bytes", "max_frame_bytes"),
    [(3, 10), (0, 10), (8, 10), (1, 256), (2, 65536), (4, 1 << 32), (4, -1)],
)
def test_length_prefixed_rejects_bad_arguments(header_bytes, max_frame_bytes):
    with pytest.raises(ValueError):
        LengthPrefixedCodec(header_bytes, max_frame_bytes)


headers = st.sampled_from([1, 2, 4])


@settings(max_examples=300)
@given(st.binary(max_size=600), chunkings, headers, st.integers(0, 255))
def test_length_prefixed_ignores_chunking(data, cuts, header_bytes, max_frame_bytes):
    def codec():
        return LengthPrefixedCodec(header_bytes, max_frame_bytes)

    whole = decode_all(codec(), [data])
    assert decode_all(codec(), split(data, cuts)) == whole
    assert decode_all(codec(), [data[i:i + 1] for i in range(len(data))]) == whole
    frames, error, rest = whole
    assert error in (None, FrameTooLong)


@given(st.lists(st.binary(max_size=300), max_size=20), chunkings, headers)
def test_length_prefixed_round_trips(msgs, cuts, header_bytes):
    codec = LengthPrefixedCodec(header_bytes, 255 if header_bytes == 1 else 300)
    msgs = [m[:codec.max_frame_bytes] for m in msgs]
    data = b"".join(codec.encode(m) for m in msgs)
    out = new_ring()
    for m in msgs:
        codec.encode_into(m, out)
    assert out.take(len(out)) == data
    assert decode_all(codec, split(data, cuts)) == (msgs, None, b"")


def test_length_prefixed_refuses_a_long_header_before_its_payload():
    codec, ring = LengthPrefixedCodec(2, 100), new_ring()
    ring.write(b"\x00")
    assert codec.maybe_take_frame(ring) is None
    ring.write(b"\x65")  # 101, and not one payload byte yet
    with pytest.raises(FrameTooLong) as info:
        codec.maybe_take_frame(ring)
    assert (info.value.size, info.value.limit) == (101, 100)
    assert info.value.reason.value == "frame_too_long"


def test_length_prefixed_edges():
    codec, ring = LengthPrefixedCodec(4, 100), new_ring()
    ring.write(codec.encode(b"") + codec.encode(b"\x00\n\xff") + b"\x00\x00\x00\x05ab")
    assert codec.maybe_take_frame(ring) == b""
    assert codec.maybe_take_frame(ring) == b"\x00\n\xff"
    assert codec.maybe_take_frame(ring) is None
    assert codec.take_remainder(ring) == b"\x00\x00\x00\x05ab"
    assert codec.take_remainder(ring) == b""
    with pytest.raises(ValueError, match="101"):
        codec.encode(b"x" * 101)
    with pytest.raises(ValueError):
        codec.encode_into(b"x" * 101, ring)
    assert len(ring) == 0
    assert LengthPrefixedCodec(1, 255).encode(b"hi") == b"\x02hi"


class _BatchOnly(LengthPrefixedCodec):
    """A codec with the batch capability but not the flat one (the ring batch path)."""

    def maybe_take_batch(self, buf: RingBuffer) -> bytes | None:
        return self.maybe_take_frame(buf)


def test_optional_capabilities_are_typed_protocols_asked_of_the_class():
    from reactor import BatchCodec, FlatCodec
    from reactor.reading import B_FLAT, B_NONE, B_RING, _codec_batch_path

    assert isinstance(LineCodec(), BatchCodec) and isinstance(LineCodec(), FlatCodec)
    assert not isinstance(LengthPrefixedCodec(), BatchCodec)
    assert not isinstance(LengthPrefixedCodec(), FlatCodec)
    assert isinstance(_BatchOnly(), BatchCodec) and not isinstance(_BatchOnly(), FlatCodec)
    assert _codec_batch_path(LineCodec()) == B_FLAT
    assert _codec_batch_path(_BatchOnly()) == B_RING
    assert _codec_batch_path(LengthPrefixedCodec()) == B_NONE
    # frames_end alone is no batch capability: the flat path hands over batches too.
    flat_only = type("FlatOnly", (LengthPrefixedCodec,), {"frames_end": lambda s, b, a, e: 0})
    assert _codec_batch_path(flat_only()) == B_NONE


def test_a_codec_with_getattr_is_asked_per_instance():
    """A delegating codec (methods found through ``__getattr__``) may differ per instance."""
    from reactor.reading import B_FLAT, B_NONE, _codec_batch_path

    class Delegate:
        def __init__(self, inner: object) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    assert _codec_batch_path(Delegate(LineCodec())) == B_FLAT
    assert _codec_batch_path(Delegate(LengthPrefixedCodec())) == B_NONE
