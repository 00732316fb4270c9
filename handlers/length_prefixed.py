"""LengthPrefixedCodec: frames carrying a big-endian unsigned length header, sans-IO.

This module owns length-prefix framing only: it reads frames out of a receive
:class:`~reactor.ring.RingBuffer` and writes encoded frames into a send ring.
It never touches a socket, the loop or a clock.
"""

from __future__ import annotations

from reactor.errors import FrameTooLong
from reactor.ring import RingBuffer

__all__ = ["LengthPrefixedCodec"]


class LengthPrefixedCodec:
    """Frames of a ``header_bytes`` (1, 2 or 4) big-endian length, then that many payload bytes.

    The header counts the payload only. A header declaring more than
    ``max_frame_bytes`` is refused as soon as it arrives, before any of the
    payload is buffered (Netty's ``LengthFieldBasedFrameDecoder`` fails fast too).
    """

    __slots__ = ("header_bytes", "max_frame_bytes")

    def __init__(self, header_bytes: int = 4, max_frame_bytes: int = 1 << 20) -> None:
        """``ValueError`` unless ``header_bytes`` is 1, 2 or 4 and ``max_frame_bytes`` is in
        ``0 .. 2**(8 * header_bytes) - 1``."""
        if header_bytes not in (1, 2, 4):
            raise ValueError(f"header_bytes {header_bytes} must be 1, 2 or 4")
        largest = (1 << (8 * header_bytes)) - 1
        if not 0 <= max_frame_bytes <= largest:
            raise ValueError(
                f"max_frame_bytes {max_frame_bytes} must be in 0..{largest} "
                f"for a {header_bytes}-byte header"
            )
        self.header_bytes = header_bytes
        self.max_frame_bytes = max_frame_bytes

    def maybe_take_frame(self, buf: RingBuffer) -> bytes | None:
        """Consume and return the next payload (header stripped); ``None`` if it is not all here.

        Raises :class:`~reactor.errors.FrameTooLong` as soon as a header
        declares more than ``max_frame_bytes``.
        """
        h = self.header_bytes
        n = len(buf)
        if n < h:
            return None
        size = int.from_bytes(buf.peek(h), "big")
        if size > self.max_frame_bytes:
            raise FrameTooLong(size, self.max_frame_bytes)
        if n - h < size:
            return None
        frame = buf.peek(size, h)
        buf.consume(h + size)
        return frame

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At EOF: consume and return an incomplete frame's bytes, header included; ``b""`` if none."""
        return buf.take(len(buf))

    def _header(self, msg) -> bytes:
        size = len(msg)
        if size > self.max_frame_bytes:
            limit = self.max_frame_bytes
            raise ValueError(f"payload of {size} bytes exceeds max_frame_bytes {limit}")
        return size.to_bytes(self.header_bytes, "big")

    def encode(self, msg) -> bytes:
        """Header plus payload; ``ValueError`` if the payload exceeds ``max_frame_bytes``.

        ``msg`` is bytes-like with one byte per item (bytes, bytearray, a ``"B"`` memoryview).
        """
        return b"".join((self._header(msg), msg))

    def encode_into(self, msg, out: RingBuffer) -> None:
        """Write the header then ``msg`` into ``out`` (no concatenation); checked as :meth:`encode`."""
        out.write(self._header(msg))
        out.write(msg)
