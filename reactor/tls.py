"""TLS on the loop: a connection's plaintext face over ``ssl.SSLObject`` and memory BIOs.

A TLS connection holds a ``TLSSocket`` where a plain one holds its socket. It has the socket
calls a connection makes (``recv_into``, ``send``, ``sendmsg``, ``shutdown``, ``close``, the
options) and answers them in plaintext, so the read path, the codecs, the write path and the
handlers are the same code for both. The handshake runs before the connection opens
(lifecycle.py: ``_tls_begin``/``_tls_step``, in the CONNECTING state, with its own timeout);
this file never sees the loop, the wheel or a handler. Nothing here is imported unless a
listener or a connect asks for TLS, so ``ssl`` (and OpenSSL) stays out of plain services.

The socket contract, kept exactly (the edge-triggered read path relies on it):

- ``recv_into`` returns fewer bytes than asked only when the kernel said EAGAIN (or at EOF):
  plaintext still inside the SSL object or the incoming BIO is read first, so a short read
  still means "nothing is left but what a new edge will announce".
- ``send``/``sendmsg`` return how much *plaintext* was accepted, counting only bytes whose
  ciphertext the kernel took whole. Once encrypted, a record cannot be taken back, so when
  the kernel takes part of it the rest of its ciphertext waits here (``_pending``, one record
  run of at most ``ENCRYPT_BYTES`` plaintext) and its plaintext is reported as not sent yet;
  the connection offers the same bytes again after the OUT edge, and they are accepted then
  without being encrypted twice (``_committed``). A short count therefore still means "the
  kernel is full: wait for the OUT edge", as it does for a plain socket.

TLS 1.2 renegotiation is refused (``OP_NO_RENEGOTIATION`` on the contexts built here);
TLS 1.3 has none.
"""

from __future__ import annotations

import errno
import ssl
from typing import Any, Iterable

from .errors import TLSError

__all__ = ["TLSSocket", "client_context", "failure_reason", "server_context", "ENCRYPT_BYTES"]

#: Plaintext encrypted per step of a send (4 records of 16 KiB): at most what waits here, in
#: ciphertext, when the kernel is full.
ENCRYPT_BYTES = 64 * 1024
#: Ciphertext taken from the kernel per read beyond the plaintext asked for: one record and
#: its overhead, so a read needs no second trip and the BIO holds no more than that.
_RECORD = 17 * 1024


#: No TLS 1.2 renegotiation (a CPU lever for clients, CVE-2011-1473); a FIN without
#: close_notify is an EOF like any other (OpenSSL 3 otherwise fails every later write, and
#: the reply to a half-closed peer -- its trailing partial line -- would be lost).
_OPTIONS = ssl.OP_NO_RENEGOTIATION | getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def server_context(certfile: str, keyfile: str | None = None, *, cafile: str | None = None,
                   verify_client: bool = False, alpn: Iterable[str] = ()) -> ssl.SSLContext:
    """A server context: TLS 1.2 and later, no renegotiation, the certificate chain in
    ``certfile`` (its key in ``keyfile`` or the same file); ``cafile`` the CAs client
    certificates must chain to, required with ``verify_client``; ``alpn`` the protocols
    offered, in order of preference. OSError or ssl.SSLError if a file is bad."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
    ctx.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        ctx.load_verify_locations(cafile)
    if verify_client:
        if cafile is None:
            raise ValueError("verify_client needs cafile: the CAs client certificates chain to")
        ctx.verify_mode = ssl.CERT_REQUIRED
    alpn = list(alpn)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(cafile: str | None = None, *, certfile: str | None = None,
                   keyfile: str | None = None, alpn: Iterable[str] = ()) -> ssl.SSLContext:
    """A client context that verifies the server (the system's CAs, or ``cafile``) and its
    host name; ``certfile``/``keyfile`` a client certificate; ``alpn`` as for the server."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    alpn = list(alpn)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def failure_reason(exc: BaseException) -> str:
    """A short, stable word for why a handshake failed, for counting: OpenSSL's reason in
    lower case (``wrong_version_number``, ``http_request``, ``certificate_verify_failed``...),
    or ``eof``, ``reset``, ``timeout``, ``io_error``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError)):
        return "eof"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return reason.lower() if isinstance(reason, str) and reason else "ssl_error"
    if isinstance(exc, (ConnectionError, BrokenPipeError)):
        return "reset"
    return "io_error"


class TLSSocket:
    """The socket of a TLS connection, in plaintext (see the module docstring).

    ``raw`` is the real socket, ``ssl_object`` the ``ssl.SSLObject``; ``cipher_buffer`` is
    the loop's shared buffer that ciphertext is received into before it goes into the BIO
    (nothing keeps a reference to it between calls)."""

    __slots__ = ("raw", "ssl_object", "_in", "_out", "_cbuf", "_pending", "_committed",
                 "_shut", "_eof", "_ended", "handshaking", "handshaken", "on_end")

    def __init__(self, raw: Any, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None, cipher_buffer: memoryview) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._in, self._out, server_side=server_side,
                                           server_hostname=server_hostname)
        self._cbuf = cipher_buffer
        self._pending: memoryview | None = None  # ciphertext the kernel has not taken yet
        self._committed = 0  # plaintext already encrypted into _pending, not yet reported
        self._shut = False   # our close_notify is out: what comes now is only discarded
        self._eof = False    # the kernel said EOF (written into the BIO once)
        self._ended = False  # the stream ended (close_notify or EOF): reads return 0 now
        self.handshaking = False
        self.handshaken = False
        #: Called when a read that returned bytes also met the end of the stream: a short
        #: read then, and nothing left to raise an edge, so the owner must read once more
        #: (the connection puts itself on the loop's ready list).
        self.on_end: Any = None

    # -- what the connection asks of any socket ------------------------------------------

    def fileno(self) -> int:
        return self.raw.fileno()

    def getsockopt(self, *args: Any) -> Any:
        return self.raw.getsockopt(*args)

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def getpeername(self) -> Any:
        return self.raw.getpeername()

    def getsockname(self) -> Any:
        return self.raw.getsockname()

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    @property
    def family(self) -> int:
        return self.raw.family

    def close(self) -> None:
        self.raw.close()

    @property
    def want_write(self) -> bool:
        """Ciphertext waits for room in the kernel (level-triggered mode asks for OUT)."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        """Bytes received from the kernel and not yet read as plaintext (a shutdown drain
        adds them to what the kernel holds)."""
        return self._in.pending + self.ssl_object.pending()

    # -- the handshake -------------------------------------------------------------------

    def handshake(self) -> bool:
        """One step: feed what the kernel holds, advance, send what that produced. True once
        the handshake is done. Raises ssl.SSLError (refused), OSError (the socket failed)."""
        self.handshaking = True
        obj = self.ssl_object
        while True:
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                try:  # the alert that says why goes out before the socket closes
                    self._flush_out()
                except OSError:
                    pass
                raise
            self._flush_out()
            if done:
                self.handshaking, self.handshaken = False, True
                return True
            if self._fill() < 0:
                return False  # more must come from the peer: a new edge will say so

    # -- reading -------------------------------------------------------------------------

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        """Plaintext into ``buf``; short only after EAGAIN from the kernel, or at EOF (0)."""
        if self._shut:  # after our close_notify the connection only discards what comes
            return self.raw.recv_into(buf, nbytes)
        if self._ended:
            return 0
        view = buf if type(buf) is memoryview else memoryview(buf)
        want = nbytes or len(view)
        read = self.ssl_object.read
        total = 0
        ended = drained = False
        while total < want:
            try:
                n = read(want - total, view[total:want])
            except ssl.SSLWantReadError:
                if drained:
                    break  # the kernel's last read was short: it was empty then (ET)
                asked = want - total + _RECORD
                got = self._fill(asked)
                if got < 0:
                    break  # the kernel is empty: this short read is the truth
                # A short read of the kernel proves it empty as an EAGAIN would (a later
                # arrival raises a new edge): no second recv to hear EAGAIN said.
                drained = got < min(asked, len(self._cbuf))
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True  # close_notify, or the peer's FIN without one: EOF either way
                break
            except ssl.SSLError as exc:
                raise TLSError(f"TLS record refused: {exc.reason or exc}") from None
            if not n:
                ended = True
                break
            total += n
        if self._out.pending:  # what reading made OpenSSL say: an alert (a renegotiation
            self._flush_out()  # refused), a KeyUpdate's answer; before anything else is sent
        if ended:
            self._ended = True
            if total and self.on_end is not None:
                self.on_end()  # the 0 that says so comes with the next read
        if total or ended or not want:
            return total
        raise BlockingIOError(errno.EAGAIN, "TLS: no ciphertext waiting")

    def _fill(self, most: int = 0) -> int:
        """Move what the kernel holds (``most`` bytes at most, 0: a buffer's worth) into the
        incoming BIO; the bytes moved (0 at EOF), or -1 if it held nothing (EAGAIN)."""
        if self._eof:
            return -1
        try:
            n = self.raw.recv_into(self._cbuf, most if 0 < most < len(self._cbuf) else 0)
        except (BlockingIOError, InterruptedError):
            return -1
        if not n:
            self._eof = True
            self._in.write_eof()
        else:
            self._in.write(self._cbuf[:n])
        return n

    # -- writing -------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0) -> int:
        return self._send((data,))

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        return self._send(buffers)

    def _send(self, buffers: Iterable[Any]) -> int:
        """Encrypt and hand over; the plaintext count whose ciphertext the kernel took."""
        if self._pending is not None and not self._flush_out():
            raise BlockingIOError(errno.EAGAIN, "TLS: the kernel is full")
        # What was encrypted before is sent now (here, or by a read's flush): offered again,
        # it is accepted without being encrypted twice.
        accepted, self._committed = self._committed, 0
        skip = accepted
        write = self.ssl_object.write
        for b in buffers:
            view = b if type(b) is memoryview else memoryview(b)
            if skip:
                if skip >= len(view):
                    skip -= len(view)
                    continue
                view, skip = view[skip:], 0
            for at in range(0, len(view), ENCRYPT_BYTES):
                chunk = view[at:at + ENCRYPT_BYTES]
                try:
                    write(chunk)
                except ssl.SSLError as exc:
                    raise TLSError(f"TLS write refused: {exc}") from None
                if not self._flush_out():
                    self._committed = len(chunk)
                    return accepted
                accepted += len(chunk)
        return accepted

    def _flush_out(self) -> bool:
        """Send the pending ciphertext, then whatever the BIO holds; True if all went."""
        out = self._out
        while True:
            p = self._pending
            if p is None:
                if not out.pending:
                    return True
                p = memoryview(out.read())
            try:
                n = self.raw.send(p)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n < len(p):
                self._pending = p[n:]
                return False
            self._pending = None

    def shutdown(self, how: int) -> None:
        """Our close_notify, then the socket's own shutdown. Called once the connection has
        nothing left to send; afterwards reads return raw bytes, which the linger discards."""
        if not self._shut:
            self._shut = True
            try:
                self.ssl_object.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # it wants the peer's close_notify too; ours is in the BIO already
            self._flush_out()  # a few dozen bytes; a full kernel here loses only the alert
        self.raw.shutdown(how)

