"""The line-echo protocol handler: the reference service's whole behaviour.

Every line is echoed byte for byte; a line over the limit is answered with
``ERR line too long`` and the connection closes, so is a partial line older than the
line timeout, with ``ERR line timeout``; after the peer's FIN the
trailing partial line is echoed as is; ``PING`` goes out as a heartbeat.
"""

from __future__ import annotations

from reactor import Handler, Transport
from reactor.errors import CodecError, LineTimeout, LineTooLong

__all__ = ["LineEchoHandler", "ERR_LINE_TOO_LONG", "ERR_LINE_TIMEOUT", "ERR_SERVER_FULL",
           "ERR_TOO_MANY_FROM_ADDRESS", "PING"]

ERR_LINE_TOO_LONG = b"ERR line too long\n"
ERR_LINE_TIMEOUT = b"ERR line timeout\n"
ERR_SERVER_FULL = b"ERR server full\n"
ERR_TOO_MANY_FROM_ADDRESS = b"ERR too many connections from your address\n"
PING = b"PING\n"


class LineEchoHandler(Handler):
    """Stateless: one instance serves every connection. Uses the batch fast path (one
    write per read); ``on_message`` serves codecs without batches."""

    __slots__ = ()

    #: on_batch only writes the lines back: on the flat path the connection sends them
    #: straight from its read buffer (Handler.echo_batches).
    echo_batches = True

    def on_message(self, conn: Transport, line: bytes) -> None:
        conn.send(line)

    def on_batch(self, conn: Transport, lines: bytes) -> None:  # type: ignore[override]
        conn.write(lines)  # every complete line, newlines included: echo them as they came

    def on_eof(self, conn: Transport, remainder: bytes) -> bool:
        if remainder:
            conn.write(remainder)
        return False

    def on_codec_error(self, conn: Transport, exc: CodecError) -> None:
        if isinstance(exc, LineTooLong):
            conn.write(ERR_LINE_TOO_LONG)
        elif isinstance(exc, LineTimeout):
            conn.write(ERR_LINE_TIMEOUT)
        conn.close(exc.reason)

    def on_heartbeat(self, conn: Transport) -> None:
        conn.write(PING)
