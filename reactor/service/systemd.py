"""systemd integration without libsystemd: readiness, watchdog and socket activation.

``Notifier`` speaks sd_notify's protocol (``KEY=VALUE`` lines in one unix datagram sent to
``$NOTIFY_SOCKET``), ``watchdog_interval_s`` reads ``$WATCHDOG_USEC``, ``listen_fds`` takes
the fds a socket unit passed (sd_listen_fds: fd 3 on, ``$LISTEN_PID``, ``$LISTEN_FDS``,
``$LISTEN_FDNAMES``), and ``SystemdLink`` pings the watchdog and posts ``STATUS=`` from a
Loop's timers. Standard library only. Nothing here binds, listens or serves, and each piece
acts only when the environment systemd made asks it to.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import re
import socket
from typing import TYPE_CHECKING, Callable, MutableMapping

if TYPE_CHECKING:  # pragma: no cover
    from ..loop import Loop
    from ..wheel import Timer

__all__ = ["Activation", "InheritedSocket", "ListenFds", "Notifier", "NotifierStats",
           "SystemdLink", "listen_fds", "watchdog_interval_s", "LISTEN_FDS_START",
           "MAX_MESSAGE_BYTES"]

log = logging.getLogger("reactor")

LISTEN_FDS_START = 3  #: the first passed fd (SD_LISTEN_FDS_START): 0-2 are stdio
#: systemd reads a notification into a PIPE_BUF-sized buffer and drops longer datagrams.
MAX_MESSAGE_BYTES = 4096
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_SUN_PATH_BYTES = 108  # sizeof(sockaddr_un.sun_path) on Linux
_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")  # the spelling of every key systemd documents
# int() would also take " 5", "+5" and "5_0"; 20 digits bound int()'s work and cover u64.
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_MAX_USEC = (1 << 64) - 2  # 2**64-1 is USEC_INFINITY: "no watchdog", not a period
_MAX_STATUS_CHARS = 1000  # 4 bytes a char at most: with READY=1 it stays under 4096 bytes


def _assignment(key: str, value: object) -> str:
    if not _KEY.match(key):
        raise ValueError(f"notification key {key!r} is not of the form KEY (A-Z, 0-9, _)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{key} needs a str or int value, not {type(value).__name__}")
    text = str(value)
    if "\n" in text or "\0" in text:
        # A newline would start an assignment the caller never meant (READY=1 inside a
        # STATUS= built from peer input); a NUL would end the message early.
        raise ValueError(f"{key} value {text[:40]!r} contains a newline or NUL")
    return f"{key}={text}"


@dataclasses.dataclass(frozen=True)
class NotifierStats:
    """What a Notifier did: datagrams the kernel took, sends that failed, the last error."""

    sent_total: int
    failed_total: int
    last_error: str | None


class Notifier:
    """Sends sd_notify messages to one ``NOTIFY_SOCKET`` address.

    ``address``: a filesystem path or an abstract name starting with ``@`` (sent with a NUL
    in its place); ValueError for anything else. The socket is opened at the first send and
    kept (non-blocking; close-on-exec, as every Python socket). A failed send never raises:
    it returns False, is counted in :meth:`stats` and logged at warning once per outage (the
    first failure, and the first after a success). Misuse raises: ValueError for a newline
    or NUL in a value, a bad key or a message over ``MAX_MESSAGE_BYTES``; TypeError for a
    value neither str nor int.
    """

    def __init__(self, address: str | bytes) -> None:
        raw = os.fsencode(address)
        if raw[:1] == b"@" and len(raw) > 1:
            raw = b"\0" + raw[1:]
        elif raw[:1] != b"/" or b"\0" in raw:
            raise ValueError(f"NOTIFY_SOCKET {address!r} is neither an absolute path nor "
                             "an @abstract name")
        if len(raw) > _SUN_PATH_BYTES:
            raise ValueError(f"NOTIFY_SOCKET of {len(raw)} bytes exceeds {_SUN_PATH_BYTES}")
        self.address, self._target = os.fsdecode(address), raw
        self._sock: socket.socket | None = None
        self._closed, self._healthy = False, True
        self._sent_total = self._failed_total = 0
        self._last_error: str | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ, *,
                     unset: bool = False) -> Notifier | None:
        """A Notifier for ``$NOTIFY_SOCKET``; None when it is unset or empty (not run with
        Type=notify) or unusable (logged at warning). ``unset``: remove the variable, so a
        program we execute does not notify in our name (sd_notify's unset_environment)."""
        value = environ.get("NOTIFY_SOCKET", "")
        if unset:
            environ.pop("NOTIFY_SOCKET", None)
        if not value:
            return None
        try:
            return cls(value)
        except ValueError as exc:
            log.warning("ignoring NOTIFY_SOCKET: %s", exc)
            return None

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=status``): start-up is over, the service serves."""
        return self.send(READY=1) if status is None else self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the line ``systemctl status`` shows."""
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutting down (draining)."""
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: alive; due at least once every ``WatchdogSec``."""
        return self.send(WATCHDOG=1)

    def send(self, text: str | None = None, /, **assignments: str | int) -> bool:
        """Send ``text`` (``KEY=VALUE`` lines) then ``assignments`` as one datagram, e.g.
        ``send(MAINPID=pid)`` or ``send("ERRNO=5")``. True if the kernel took it (systemd may
        still refuse it: ``NotifyAccess=``), False if the send failed."""
        lines = [] if text is None else text.removesuffix("\n").split("\n")
        for line in lines:
            key, eq, value = line.partition("=")
            if not eq:
                raise ValueError(f"notification line {line[:40]!r} is not KEY=VALUE")
            _assignment(key, value)
        lines += [_assignment(k, v) for k, v in assignments.items()]
        if not lines:
            raise ValueError("nothing to send: give KEY=VALUE text or assignments")
        data = "\n".join(lines).encode("utf-8", "surrogateescape")
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"notification of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            if self._closed:
                raise OSError("the notifier is closed")
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a full systemd queue must not stall the loop
            self._sock.sendto(data, self._target)  # by address: systemd may have re-executed
        except OSError as exc:
            self._failed_total += 1
            self._last_error = exc.strerror or str(exc)
            if self._healthy and not self._closed:
                log.warning("systemd notification to %s failed: %s (counted, not logged "
                            "again until one succeeds)", self.address, self._last_error)
            self._healthy = False
            return False
        self._sent_total += 1
        self._healthy = True
        return True

    def stats(self) -> NotifierStats:
        return NotifierStats(self._sent_total, self._failed_total, self._last_error)

    def close(self) -> None:
        """Close the socket; later sends fail (counted, not logged)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: MutableMapping[str, str] = os.environ, *,
                        unset: bool = False) -> float | None:
    """``WatchdogSec`` as systemd passed it (``$WATCHDOG_USEC``), in seconds, or None: unset,
    meant for another process (``$WATCHDOG_PID`` set and not ours), or malformed (logged at
    warning). Ping at half of it, systemd's own advice. ``unset``: remove both variables
    (sd_watchdog_enabled's unset_environment)."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if unset:
        environ.pop("WATCHDOG_USEC", None)
        environ.pop("WATCHDOG_PID", None)
    if not usec:
        return None
    if pid and not _DIGITS.match(pid):
        log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", pid[:40])
        return None
    if pid and int(pid) != os.getpid():
        return None  # a parent's watchdog, inherited: not ours to feed
    if not _DIGITS.match(usec) or not 0 < int(usec) <= _MAX_USEC:
        log.warning("ignoring the watchdog: WATCHDOG_USEC=%r is not a positive integer",
                    usec[:40])
        return None
    return int(usec) / 1e6


class Activation(enum.Enum):
    """What ``listen_fds`` made of the environment."""

    ACTIVATED = "activated"  #: fds were passed to this process
    NOT_ACTIVATED = "not activated"  #: LISTEN_PID or LISTEN_FDS unset: started some other way
    OTHER_PROCESS = "other process"  #: LISTEN_PID names another process (an inherited env)
    MALFORMED = "malformed"  #: not a number, LISTEN_FDS=0, past the fd limit, a closed fd


@dataclasses.dataclass(frozen=True)
class InheritedSocket:
    """One passed fd. ``socket`` owns it, in the blocking mode it came in (None, with family
    and kind None, for an fd that is not a socket: ``ListenFIFO=``, ``ListenSpecial=``)."""

    fd: int
    name: str  #: its FileDescriptorName= ("unknown" when systemd gave none)
    socket: socket.socket | None
    family: socket.AddressFamily | None
    kind: socket.SocketKind | None
    is_listening: bool  #: SO_ACCEPTCONN: listen() was called (ListenStream=, not Accept=yes)


class ListenFds(list[InheritedSocket]):
    """``listen_fds``' answer: the passed fds in order, with ``status`` (an Activation)
    and ``reason``, one line saying why the list is empty ("" when it is not)."""

    def __init__(self, fds: list[InheritedSocket], status: Activation, reason: str = ""):
        super().__init__(fds)
        self.status, self.reason = status, reason

    def named(self, name: str) -> list[InheritedSocket]:
        """The fds whose FileDescriptorName= is ``name``."""
        return [s for s in self if s.name == name]


def _activation(pid: str | None, count: str | None) -> tuple[Activation, str]:
    if not pid or not count:
        unset = [k for k, v in (("LISTEN_PID", pid), ("LISTEN_FDS", count)) if not v]
        return Activation.NOT_ACTIVATED, f"{' and '.join(unset)} not set"
    if not _DIGITS.match(pid):
        return Activation.MALFORMED, f"LISTEN_PID={pid[:40]!r} is not a process id"
    if int(pid) != os.getpid():
        return Activation.OTHER_PROCESS, f"LISTEN_PID={pid} is not this process ({os.getpid()})"
    if not _DIGITS.match(count) or int(count) == 0:
        return Activation.MALFORMED, f"LISTEN_FDS={count[:40]!r} is not a positive count"
    n, limit = int(count), os.sysconf("SC_OPEN_MAX")
    if 0 < limit < n + LISTEN_FDS_START:  # (-1: no limit to check against)
        return Activation.MALFORMED, f"LISTEN_FDS={n} exceeds the fd limit {limit}"
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + n):
        try:
            os.get_inheritable(fd)  # only a probe: EBADF if the fd is not open
        except OSError:
            return Activation.MALFORMED, f"LISTEN_FDS={n} but fd {fd} is not open"
    return Activation.ACTIVATED, ""


def _wrap(fd: int, name: str) -> InheritedSocket:
    os.set_inheritable(fd, False)  # ours now: a program we execute must not hold it open
    try:
        sock = socket.socket(fileno=fd)  # the kernel tells family, type and protocol
    except OSError:  # ENOTSOCK
        return InheritedSocket(fd, name, None, None, None, False)
    listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    return InheritedSocket(fd, name, sock, sock.family, sock.type, listening)


def listen_fds(environ: MutableMapping[str, str] = os.environ, unset: bool = True) -> ListenFds:
    """The fds systemd passed to this process (sd_listen_fds_with_names).

    When ``LISTEN_PID`` is our pid and ``LISTEN_FDS`` is n > 0: fds 3 .. 3+n-1, each
    wrapped in a socket object and made close-on-exec, named from ``LISTEN_FDNAMES``
    (colon-separated; a missing or empty name is "unknown", as in systemd). Otherwise an
    empty list whose ``status`` and ``reason`` say why, every fd left alone; a malformed
    value or another process's LISTEN_PID is also logged at warning. ``unset``: remove the
    three variables whatever the outcome, as sd_listen_fds does, so that no program we
    execute takes our fds for its own. Never raises for what the environment holds.
    """
    pid, count, names = (environ.get(k) for k in _LISTEN_VARS)
    if unset:
        for key in _LISTEN_VARS:
            environ.pop(key, None)
    status, reason = _activation(pid, count)
    if status is not Activation.ACTIVATED:
        if status is not Activation.NOT_ACTIVATED:
            log.warning("socket activation ignored: %s", reason)
        return ListenFds([], status, reason)
    n = int(count or 0)
    given = names.split(":") if names is not None else []
    if names is not None and len(given) != n:
        log.warning("LISTEN_FDNAMES has %d name(s) for %d fd(s): missing ones are 'unknown'",
                    len(given), n)
    given += [""] * n
    return ListenFds([_wrap(LISTEN_FDS_START + i, given[i] or "unknown") for i in range(n)],
                     Activation.ACTIVATED)


class SystemdLink:
    """Keeps systemd informed about a service running on ``loop``.

    Every half ``watchdog_interval_s`` (``WatchdogSec``; None: no pings) it sends
    ``WATCHDOG=1``; every ``status_every_s`` (0: only at :meth:`ready`) ``STATUS=`` with
    ``status()``'s text (newlines become spaces, cut at 1000 characters; an exception is
    logged once and skips that update). Both run on the loop's timer wheel, each re-armed
    from when it fired: a loop that stalls sends no ping (what the watchdog is there to
    notice) and, once it runs again, one, not the missed ones. They go on during a drain.
    Timers are all it holds: no fd or connection is registered, so ``Loop.shutdown()`` stops
    the loop once its connections are gone, as without a link. With ``notifier`` None
    (not under systemd) every method does nothing and no timer is armed.
    """

    def __init__(self, loop: Loop, notifier: Notifier | None, *,
                 watchdog_interval_s: float | None = None,
                 status: Callable[[], object] | None = None, status_every_s: float = 10.0):
        if watchdog_interval_s is not None and not 0 < watchdog_interval_s < math.inf:
            raise ValueError(f"watchdog_interval_s must be > 0 and finite, not "
                             f"{watchdog_interval_s}")
        if not 0 <= status_every_s < math.inf:
            raise ValueError(f"status_every_s must be >= 0 and finite, not {status_every_s}")
        self.notifier = notifier
        self._status, self._status_failed, self._owns_notifier = status, False, False
        on = notifier is not None
        self.watchdog_every_s = watchdog_interval_s / 2 if on and watchdog_interval_s else None
        self.status_every_s = status_every_s if on and status is not None else 0.0
        self._loop = loop
        self._timers: list[Timer] = []
        if self.watchdog_every_s:
            self._every(self.watchdog_every_s, self._ping)
        if self.status_every_s:
            self._every(self.status_every_s, self._post_status)

    @classmethod
    def from_environ(cls, loop: Loop, environ: MutableMapping[str, str] = os.environ, *,
                     status: Callable[[], object] | None = None,
                     status_every_s: float = 10.0) -> SystemdLink:
        """A link for what systemd set (NOTIFY_SOCKET, WATCHDOG_USEC/PID), inert when it set
        nothing. The link owns its Notifier: :meth:`close` closes it."""
        link = cls(loop, Notifier.from_environ(environ), status=status,
                   watchdog_interval_s=watchdog_interval_s(environ),
                   status_every_s=status_every_s)
        link._owns_notifier = True
        return link

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` with ``STATUS=`` (``status``, else ``status()``'s text if any)."""
        if self.notifier is None:
            return False
        return self.notifier.ready(status if status is not None else self._status_text())

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (and ``STATUS=status``); the timers go on through the drain."""
        if self.notifier is None:
            return False
        if status is None:
            return self.notifier.stopping()
        return self.notifier.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Cancel the timers (and close the notifier if :meth:`from_environ` made it)."""
        for timer in self._timers:
            self._loop.cancel_timer(timer)
        self._timers = []
        if self._owns_notifier and self.notifier is not None:
            self.notifier.close()

    def _every(self, every_s: float, action: Callable[[], None]) -> None:
        # Each interval is every_s plus the firing's lateness (a tick when the loop is
        # healthy); systemd restarts its watchdog countdown at each ping, so nothing adds up.
        def fire() -> None:
            action()
            if timer in self._timers:  # not closed meanwhile
                self._loop.rearm(timer, every_s)

        timer = self._loop.call_later(every_s, fire)
        self._timers.append(timer)

    def _status_text(self) -> str | None:
        if self._status is None:
            return None
        try:
            text = str(self._status())
        except Exception:  # noqa: BLE001 - a status line is never worth the service
            if not self._status_failed:
                log.exception("systemd status callable %r raised (logged once)", self._status)
            self._status_failed = True
            return None
        return text.replace("\n", " ").replace("\0", " ")[:_MAX_STATUS_CHARS]

    def _ping(self) -> None:
        if self.notifier is not None:
            self.notifier.watchdog()

    def _post_status(self) -> None:
        text = self._status_text()
        if text is not None and self.notifier is not None:
            self.notifier.status(text)
