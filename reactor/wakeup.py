"""Waking the loop from elsewhere: another thread (eventfd) or a signal (set_wakeup_fd).

``Waker`` is one eventfd on Linux (a socketpair elsewhere): ``wake()`` may be
called from any thread. ``SignalPipe`` is a socketpair handed to
``signal.set_wakeup_fd``: the C-level handler writes each signal's number into
it, so a poll sleeping in the kernel returns at once. ``Signals`` keeps the
handlers the loop runs for them. None knows the loop: each is polled as a
``Driven`` (``fileno``, ``_on_events``). ``drain_on_signals`` is the usual policy a
service puts on top: the first SIGTERM/SIGINT drains, a second aborts.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, Callable

__all__ = ["Waker", "SignalPipe", "Signals", "drain_on_signals"]


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

    def _on_events(self, ev: int) -> None:  # polled by the loop: the wake is the whole news
        self.drain()

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


def _ignore_signal(signum: int, frame: Any) -> None:
    """Python-level handler: the work happens on the loop, woken by set_wakeup_fd."""


class Signals:
    """The loop's signal handlers: ``callback(*args)`` run by ``run`` on the loop when a
    signal arrives, through one ``SignalPipe`` made on first use. Main thread only."""

    __slots__ = ("_run", "_register", "_pipe", "_handlers", "_saved")

    def __init__(self, run: Callable[[Callable[..., Any], tuple[Any, ...]], None],
                 register: Callable[[Signals], None]) -> None:
        self._run = run  # calls a handler, keeping the loop alive if it raises
        self._register = register  # asks the loop to poll us, once the pipe exists
        self._pipe: SignalPipe | None = None
        self._handlers: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._saved: dict[int, Any] = {}

    def fileno(self) -> int:
        return -1 if self._pipe is None else self._pipe.fileno()

    def add(self, sig: int, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._pipe is None:
            self._pipe = SignalPipe()
            self._register(self)
        if sig not in self._saved:
            self._saved[sig] = signal.getsignal(sig)
        signal.signal(sig, _ignore_signal)
        self._handlers[sig] = (callback, args)

    def remove(self, sig: int) -> bool:
        """Restore ``sig``'s disposition from before ``add``; False if it had no handler."""
        if self._handlers.pop(sig, None) is None:
            return False
        signal.signal(sig, self._saved.pop(sig, signal.SIG_DFL))
        return True

    def _on_events(self, ev: int) -> None:
        if self._pipe is None:
            return
        for sig in self._pipe.read_signals():
            entry = self._handlers.get(sig)
            if entry is not None:
                self._run(entry[0], entry[1])

    def close(self) -> None:
        for sig in list(self._handlers):
            self.remove(sig)
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def close_after_fork(self) -> None:
        """In a forked child: drop the pipe; dispositions stay as they are."""
        if self._pipe is not None:
            self._pipe.close_after_fork()
            self._pipe = None


def drain_on_signals(loop: Any, drain_timeout_s: float = 10.0,
                     before: Callable[[str], object] | None = None,
                     signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """The first of ``signals`` drains: ``before(name)`` if given (log it, tell systemd, send
    protocol goodbyes that the drain will flush), then ``loop.shutdown(drain_timeout_s)``:
    stop accepting, deliver what peers already sent, flush, close, and let ``run()`` return.
    A second one aborts every connection at once. Main thread only, like
    ``Loop.add_signal_handler``."""
    def on_signal(name: str) -> None:
        if loop.shutting_down:
            loop.abort_all(f"second {name}")
            return
        if before is not None:
            before(name)
        loop.shutdown(drain_timeout_s)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, signal.Signals(sig).name)
