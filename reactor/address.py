"""How the project spells a socket address, in logs, the stats socket and fd-stats: one place.

``("127.0.0.1", 9000)`` is ``127.0.0.1:9000``; an IPv6 host is bracketed, ``[::1]:9000``,
so the port can be told from the address; a unix socket is ``unix:PATH`` (``unix`` for an
unnamed one, as the client end of a connection usually is; ``unix:@NAME`` for an abstract
one); ``None`` (not known) is ``?``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_address"]


def format_address(addr: Any, brackets: bool = True) -> str:
    """``addr`` as ``HOST:PORT``, ``[HOST]:PORT`` (IPv6), ``unix:PATH``, ``unix`` or ``?``.

    ``brackets=False`` leaves an IPv6 host bare (``::1:9000``): line-echo's first stdout
    line, ``listening on HOST:PORT``, is a contract and has always been printed so.
    """
    if addr is None:
        return "?"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if brackets and ":" in host else f"{host}:{addr[1]}"
    if isinstance(addr, bytes):  # an abstract unix name, as the kernel reports it: @NAME (ss's way)
        addr = (b"@" + addr[1:] if addr[:1] == b"\0" else addr).decode(errors="backslashreplace")
    return f"unix:{addr}" if addr else "unix"
