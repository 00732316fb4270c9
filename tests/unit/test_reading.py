"""reactor/reading.py: the read path is chosen once per connection, and every path hands the
handler the same bytes, in order, with the same limits, however the input is cut."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reactor.reading as reading
from handlers.length_prefixed import LengthPrefixedCodec
from handlers.line import LineCodec
from reactor import CloseReason, Handler
from reactor.connstate import B_FLAT, B_NONE, B_RING
from reactor.reading import PUMPS, Reading
from reactor.testing import Harness


class PerFrame(Handler):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.closed: list[CloseReason] = []

    def on_message(self, conn, msg):
        self.got.append(bytes(msg))

    def on_close(self, conn, reason):
        self.closed.append(reason)

    def wire(self) -> bytes:
        """What was delivered, as it came on the wire (a frame is a line without its \\n)."""
        return b"".join(m + b"\n" for m in self.got)


class Batched(PerFrame):
    def on_batch(self, conn, data):  # type: ignore[override]
        self.got.append(bytes(data))

    def wire(self) -> bytes:
        return b"".join(self.got)


class RingBatchLines:
    """LineCodec with the batch capability but not the flat one: the ring batch path."""

    def __init__(self, max_line: int) -> None:
        self._inner = LineCodec(max_line)
        self.max_frame_bytes = max_line
        self.maybe_take_frame = self._inner.maybe_take_frame
        self.take_remainder = self._inner.take_remainder
        self.encode = self._inner.encode
        self.encode_into = self._inner.encode_into

    def maybe_take_batch(self, buf):
        return self._inner.maybe_take_batch(buf)


PATHS = {  # name: (handler, codec, the path chosen, its read core)
    "per frame": (PerFrame, LineCodec, B_NONE, Reading._pump_ring),
    "ring batch": (Batched, RingBatchLines, B_RING, Reading._pump_ring),
    "flat batch": (Batched, LineCodec, B_FLAT, Reading._pump_flat),
}


@pytest.mark.parametrize("name", PATHS)
def test_the_path_is_bound_into_the_class_once(name, monkeypatch):
    handler_cls, codec_cls, path, pump = PATHS[name]
    with Harness(handler_cls(), codec_cls(64)) as h:
        assert type(h.conn)._batch == path and type(h.conn)._pump is pump is PUMPS[path]
        # Nothing asks the codec or the handler again per event: with the choosers gone,
        # reads still go the same way.
        monkeypatch.setattr(reading, "_codec_batch_path", None)
        monkeypatch.setattr(reading, "read_path", None)
        h.feed(b"one\ntw")
        h.feed(b"o\n")
        assert h.handler.wire() == b"one\ntwo\n"
        assert len(h.handler.got) == 2  # one per line, or one per read (each completed one)


def test_a_codec_without_the_batch_capability_gets_frames_even_for_a_batch_handler():
    with Harness(Batched(), LengthPrefixedCodec(header_bytes=1, max_frame_bytes=255)) as h:
        assert type(h.conn)._pump is Reading._pump_ring and type(h.conn)._batch == B_NONE
        h.feed(b"\x03abc\x01")
        h.feed(b"d\x02e")
        assert h.handler.got == [b"abc", b"d"]


LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
                 max_size=20)


@settings(max_examples=60, deadline=None)
@given(LINES, st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
       st.lists(st.integers(0, 2000), max_size=12), st.booleans())
def test_every_path_delivers_the_same_bytes_and_the_same_verdict(lines, tail, cuts, eof):
    """Per frame, ring batch and flat batch: the lines joined, the partial tail kept for
    on_eof, and a line over the limit (32) closes with LINE_TOO_LONG after the good ones."""
    data = b"".join(lines) + tail
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    seen = {}
    for name, (handler_cls, codec_cls, _, _) in PATHS.items():
        handler = handler_cls()
        with Harness(handler, codec_cls(32)) as h:
            for a, b in itertools.pairwise(bounds):
                if h.closed:
                    break
                h.feed(data[a:b])
            if eof and not h.closed:
                h.feed_eof()
            seen[name] = (handler.wire(), h.close_reason, h.conn.recv_buffered if not h.closed else None)
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), seen
    good = list(itertools.takewhile(lambda line: len(line) <= 32, lines))
    if len(good) < len(lines) or len(tail) > 32:
        assert first[1] is CloseReason.LINE_TOO_LONG
        assert first[0] == b"".join(good)
    else:
        assert first[0] == b"".join(lines)
        assert first[1] is (CloseReason.PEER_CLOSED if eof else None)
