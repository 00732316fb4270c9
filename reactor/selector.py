"""Readiness backends: EdgeSelector (epoll, EPOLLET, registered once) and LevelSelector.

Both report ``(fd, mask)`` pairs in epoll's bit values, so the loop has one
dispatch path. ``edge_triggered`` tells the connection code which discipline
it must follow: with edges it never touches interest masks again after
``register``; with levels it must drop read interest while paused and ask for
write interest only while a send is blocked. This module knows fds and masks,
nothing about connections.
"""

from __future__ import annotations

import select
import selectors

__all__ = [
    "EdgeSelector",
    "LevelSelector",
    "make_selector",
    "IN",
    "OUT",
    "ERR",
    "HUP",
    "RDHUP",
]

IN: int = getattr(select, "EPOLLIN", 0x001)
OUT: int = getattr(select, "EPOLLOUT", 0x004)
ERR: int = getattr(select, "EPOLLERR", 0x008)
HUP: int = getattr(select, "EPOLLHUP", 0x010)
RDHUP: int = getattr(select, "EPOLLRDHUP", 0x2000)
_ET: int = getattr(select, "EPOLLET", 1 << 31)

#: How many events one poll returns at most. A fixed bound: CPython allocates the
#: epoll_event array per call, and asyncio's ``len(fds)`` grows it with every
#: connection (research/anchors.md, finding 3). 1023 is ``epoll.poll``'s own default
#: (FD_SETSIZE - 1), which lets the default selector hand out the C method itself.
MAX_EVENTS = 1023


class EdgeSelector:
    """epoll in edge-triggered mode: each fd is registered once for every edge it needs.

    Connections ask for IN|OUT|RDHUP at registration and are never modified again:
    an empty or refilled send buffer costs no ``epoll_ctl`` (asyncio pays one per
    transition). The price is the ET discipline in ``connection.py``.
    """

    edge_triggered = True
    name = "epoll-et"

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._ep = select.epoll()
        self._max_events = max_events
        if max_events == MAX_EVENTS:
            # The loop calls poll once per iteration: with epoll's default bound (and its
            # None for "forever"), the bound C method does the same job without a Python frame.
            self.poll = self._ep.poll  # type: ignore[method-assign]

    def fileno(self) -> int:
        return self._ep.fileno()

    def register(self, fd: int, reading: bool = True, writing: bool = True) -> None:
        """Watch ``fd``. ``reading``/``writing`` say which edges the fd can ever need."""
        mask = _ET
        if reading:
            mask |= IN | RDHUP
        if writing:
            mask |= OUT
        self._ep.register(fd, mask)

    def set_interest(self, fd: int, reading: bool, writing: bool) -> None:
        """Edges need no change of interest; kept so both backends share one interface."""

    def unregister(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):  # already closed or never registered
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait up to ``timeout`` seconds (None: forever) and return ``(fd, mask)`` pairs."""
        return self._ep.poll(-1 if timeout is None else timeout, self._max_events)

    def close(self) -> None:
        self._ep.close()


class LevelSelector:
    """The platform's default ``selectors`` selector, level-triggered.

    The fallback where epoll is missing, and a second mode for tests on Linux.
    Interest is changed with ``set_interest``; masks are translated to epoll bits.
    """

    edge_triggered = False

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self._sel = selector if selector is not None else selectors.DefaultSelector()
        self.name = type(self._sel).__name__

    def fileno(self) -> int:
        return self._sel.fileno() if hasattr(self._sel, "fileno") else -1

    @staticmethod
    def _mask(reading: bool, writing: bool) -> int:
        return (selectors.EVENT_READ if reading else 0) | (
            selectors.EVENT_WRITE if writing else 0
        )

    def register(self, fd: int, reading: bool = True, writing: bool = False) -> None:
        """Watch ``fd``. A level-triggered connection starts with read interest only."""
        mask = self._mask(reading, writing)
        if mask:
            self._sel.register(fd, mask)

    def set_interest(self, fd: int, reading: bool, writing: bool) -> None:
        mask = self._mask(reading, writing)
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            if mask:
                self._sel.register(fd, mask)
            return
        if not mask:
            self._sel.unregister(fd)
        elif key.events != mask:
            self._sel.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is not None and timeout < 0:
            timeout = 0
        out = []
        for key, events in self._sel.select(timeout):
            mask = 0
            if events & selectors.EVENT_READ:
                mask |= IN
            if events & selectors.EVENT_WRITE:
                mask |= OUT
            out.append((key.fd, mask))
        return out

    def close(self) -> None:
        self._sel.close()


def make_selector(mode: str = "auto") -> EdgeSelector | LevelSelector:
    """``"edge"``: epoll with EPOLLET (Linux only); ``"level"``: the default selector;
    ``"auto"``: edge where epoll exists, else level."""
    if mode not in ("auto", "edge", "level"):
        raise ValueError(f"selector mode must be 'auto', 'edge' or 'level', not {mode!r}")
    has_epoll = hasattr(select, "epoll") and hasattr(select, "EPOLLET")
    if mode == "edge" and not has_epoll:
        raise ValueError("selector mode 'edge' needs epoll with EPOLLET (Linux)")
    if mode == "level" or not has_epoll:
        return LevelSelector()
    return EdgeSelector()
