"""The unix socket that serves the stats document, and the reader's side of it.

``serve_stats(loop, path)`` answers each connection on a mode-0600 unix socket with
one document (``reactor.stats.loop_stats``, or what a provider gathers), then closes;
a peer whose uid is neither ours nor root's is closed without a byte. The socket is
advertised at a well-known path keyed by PID so ``fd-stats PID`` finds it without
being told. ``read_stats(path)`` is the reader.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import tempfile
from typing import TYPE_CHECKING, Any, Callable

from ..errors import CloseReason, FrameTooLong
from ..protocols import Handler, Transport
from ..stats import loop_stats

if TYPE_CHECKING:  # pragma: no cover
    from ..listener import Listener
    from ..loop import Loop
    from ..ring import RingBuffer

__all__ = ["StatsError", "WholeReply", "advert_dir", "advertised_path", "read_stats",
           "serve_stats"]

log = logging.getLogger("reactor")

_MAX_DOC_BYTES = 16 << 20  # a stats reply larger than this is garbage, not a document


class StatsError(Exception):
    """Reading a stats socket failed; ``str(exc)`` is one line saying why."""


class _IgnoreInput:
    """A codec for the stats socket: whatever a reader sends is dropped."""

    __slots__ = ()
    max_frame_bytes = 0

    def maybe_take_frame(self, buf: RingBuffer) -> None:
        buf.clear()
        return None

    def take_remainder(self, buf: RingBuffer) -> bytes:
        buf.clear()
        return b""

    def encode(self, msg: Any) -> bytes:
        return bytes(msg)

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        out.write(msg)


class WholeReply(_IgnoreInput):
    """A codec that keeps everything until EOF (``take_remainder``), up to a cap."""

    __slots__ = ()
    max_frame_bytes = _MAX_DOC_BYTES

    def maybe_take_frame(self, buf: RingBuffer) -> None:
        if len(buf) > _MAX_DOC_BYTES:
            raise FrameTooLong(len(buf), _MAX_DOC_BYTES)
        return None

    def take_remainder(self, buf: RingBuffer) -> bytes:
        return buf.take(len(buf))


Provider = Callable[[Callable[[dict[str, Any]], None]], None]


class _StatsHandler(Handler):
    __slots__ = ("_provide",)

    def __init__(self, provide: Provider) -> None:
        self._provide = provide

    def on_connect(self, conn: Transport) -> None:
        if not _peer_allowed(conn.get_extra_info("socket")):
            conn.abort(CloseReason.LOCAL_CLOSE)
            return

        def reply(doc: dict[str, Any]) -> None:
            if conn.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n"):
                conn.close()

        self._provide(reply)

    def on_eof(self, conn: Transport, remainder: bytes) -> bool:
        # A reader that shuts down its side before an asynchronous provider (the
        # supervisor's) has replied still gets the document: reply() closes.
        return True

    def on_idle(self, conn: Transport) -> None:
        conn.abort(CloseReason.IDLE_TIMEOUT)


def _peer_allowed(sock: socket.socket) -> bool:
    """Only our own uid and root may read the stats. The file mode is not enough:
    a socket inherited by, or passed to, another process could be reached by others."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - no SO_PEERCRED here
        return True
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def advert_dir(uid: int | None = None) -> str:
    """Where processes of ``uid`` advertise their stats sockets, one entry per PID."""
    return os.path.join(tempfile.gettempdir(), f"reactor-stats-{os.getuid() if uid is None else uid}")


def advertised_path(pid: int, uid: int | None = None) -> str:
    """The well-known path of ``pid``'s stats socket (a symlink to it, or the socket itself)."""
    return os.path.join(advert_dir(uid), f"{pid}.sock")


def _advert_dir_ready() -> str | None:
    """Create our advert directory (0700) if needed; None if it is not safely ours."""
    d = advert_dir()
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("not advertising the stats socket: %s is not a private directory of ours", d)
        return None
    return d


def serve_stats(loop: Loop, path: str | None = None, provider: Provider | None = None,
                advertise: bool = True) -> Listener:
    """Serve the loop's stats on the unix socket ``path`` (mode 0600). One call.

    ``path`` defaults to :func:`advertised_path` of this process. With
    ``advertise``, a symlink at that well-known path points to ``path`` so
    ``fd-stats PID`` finds it. ``provider(reply)``, if given, produces the
    document asynchronously by calling ``reply(doc)`` (the supervisor of
    several workers gathers theirs this way). Readers do not count as
    connections and cannot stall the loop: a reader that never reads is closed
    by a 5-second idle timeout. Raises OSError if ``path`` cannot be bound.
    """
    advert = advertised_path(os.getpid()) if advertise and _advert_dir_ready() else None
    if path is None:
        if advert is None:
            raise OSError("no stats socket path given and no private advert directory")
        path = advert
    if provider is None:
        def provider(reply: Callable[[dict[str, Any]], None]) -> None:
            reply(loop_stats(loop))
    listener = loop.listen(path, lambda: _StatsHandler(provider), _IgnoreInput,
                           unix_mode=0o600, counted=False, idle_timeout_s=5.0, linger_s=0.5)
    if advert is not None and os.path.abspath(path) != advert:
        try:
            if os.path.lexists(advert):
                os.unlink(advert)
            os.symlink(os.path.abspath(path), advert)
        except OSError as exc:
            log.warning("cannot advertise the stats socket at %s: %s", advert, exc)
            advert = None

    def cleanup() -> None:
        if advert is not None and os.path.abspath(path) != advert:
            try:
                if os.readlink(advert) == os.path.abspath(path):
                    os.unlink(advert)
            except OSError:
                pass

    listener.on_close = cleanup
    return listener


def read_stats(path: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Client side: connect to a stats socket and return its document.

    Raises :class:`StatsError` with a one-line reason: missing, stale (nobody
    listening), no permission, timed out, or not a stats document.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(path)
            chunks, size = [], 0
            while size <= _MAX_DOC_BYTES:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
    except FileNotFoundError:
        raise StatsError(f"stats socket {path} does not exist") from None
    except ConnectionRefusedError:
        raise StatsError(f"stats socket {path} is stale: nobody is listening on it") from None
    except PermissionError:
        raise StatsError(f"no permission to read stats socket {path}") from None
    except TimeoutError:
        raise StatsError(f"stats socket {path} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise StatsError(f"cannot read stats socket {path}: {exc.strerror or exc}") from None
    raw = b"".join(chunks)
    if not raw:
        raise StatsError(f"stats socket {path} closed without a document (are we allowed?)")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise StatsError(f"stats socket {path} did not answer with a stats document") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise StatsError(f"stats socket {path} did not answer with a stats document")
    return doc
