"""Making sockets for the loop: listening ones (TCP or unix) and outgoing ones.

Plain functions over the ``socket`` module, kept apart from the loop so that the daemon's
supervisor (reactor/service/server.py) binds its workers' sockets the way ``Loop.listen``
does. A unix socket path left by a dead process is reused; one a live process listens on,
or a path that is not a socket, is refused with EADDRINUSE.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

__all__ = ["bind_listening", "outgoing_socket"]


def bind_listening(address: tuple[str, int] | str, backlog: int, reuse_port: bool = False,
                   unix_mode: int | None = None) -> socket.socket:
    """A socket bound to ``(host, port)`` (SO_REUSEADDR; SO_REUSEPORT if ``reuse_port``)
    or to a unix socket path (file mode ``unix_mode``, set race-free through the umask),
    listening with ``backlog``. Blocking, as ``socket.socket`` makes it."""
    if isinstance(address, str):
        return _bind_unix(address, backlog, unix_mode)
    host, port = address
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, backlog: int, mode: int | None) -> socket.socket:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: nobody listens on it
        else:
            raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode) if mode is not None else None
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        if old is not None:
            os.umask(old)
    return sock


def outgoing_socket(address: tuple[str, int] | str) -> tuple[socket.socket, Any]:
    """A non-blocking, unconnected stream socket for ``address`` and the resolved target
    to ``connect_ex`` to. Host names are resolved here (blocking)."""
    target: Any = address
    if isinstance(address, str):
        family = socket.AF_UNIX
    else:
        info = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0]
        family, target = info[0], info[4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock, target
