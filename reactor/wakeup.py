"""Waking the loop from elsewhere: another thread (eventfd) or a signal (set_wakeup_fd).

``Waker`` is one eventfd on Linux (a socketpair elsewhere): ``wake()`` may be
called from any thread. ``SignalPipe`` is a socketpair handed to
``signal.set_wakeup_fd``: the C-level handler writes each signal's number into
it, so a poll sleeping in the kernel returns at once. Neither knows the loop.
"""

from __future__ import annotations

import os
import signal
import socket

__all__ = ["Waker", "SignalPipe"]


class Waker:
    """A readable fd that ``wake()`` makes ready; ``drain()`` resets it."""

    __slots__ = ("_rfd", "_wfd", "_event")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._rfd = self._wfd = fd
            self._event = True
        else:  # pragma: no cover - non-Linux
            r, w = socket.socketpair()
            r.setblocking(False)
            w.setblocking(False)
            self._rfd, self._wfd = r.detach(), w.detach()
            self._event = False

    def fileno(self) -> int:
        return self._rfd

    def wake(self) -> None:
        """Make the fd readable. Safe from any thread; never blocks."""
        try:
            if self._event:
                os.eventfd_write(self._wfd, 1)
            else:  # pragma: no cover
                os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending (or closing): the loop will wake anyway

    def drain(self) -> None:
        try:
            if self._event:
                os.eventfd_read(self._rfd)
            else:  # pragma: no cover
                while os.read(self._rfd, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in {self._rfd, self._wfd}:
            try:
                os.close(fd)
            except OSError:
                pass


class SignalPipe:
    """A socketpair whose write end is the process's ``signal.set_wakeup_fd``.

    Must be created and closed in the main thread.
    """

    __slots__ = ("_r", "_w", "_old")

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._old = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)

    def fileno(self) -> int:
        return self._r.fileno()

    def read_signals(self) -> list[int]:
        """The signal numbers written since the last call (in order, may repeat)."""
        got: list[int] = []
        while True:
            try:
                data = self._r.recv(4096)
            except (BlockingIOError, InterruptedError):
                return got
            if not data:
                return got
            got.extend(data)

    def close(self) -> None:
        try:
            signal.set_wakeup_fd(self._old)
        except (ValueError, OSError):  # not the main thread, or old fd gone
            pass
        self._r.close()
        self._w.close()

    def close_after_fork(self) -> None:
        """In a forked child: drop the fds without touching the (shared) handler state."""
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # pragma: no cover
            pass
        self._r.close()
        self._w.close()
