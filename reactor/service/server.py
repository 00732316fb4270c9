"""Running a service: bind, serve in one process or N workers, drain on SIGTERM.

What every daemon built on the library needs around its handler, so CLIs stay
thin: ``bind_sockets`` claims the address (refusing a port another process
already holds, SO_REUSEPORT or not), or ``activated_socket`` takes the one systemd
passed; ``run_server`` serves it in this process
or forks ``workers`` processes that share the port and supervises them
(restart on death, SIGTERM/SIGINT forwarded). The first SIGTERM or SIGINT
drains gracefully within ``drain_timeout_s``; a second one ends at once. The main
process (the supervisor, or the only process) tells systemd it is ready, stopping and
alive when systemd asked (systemd.py), and serves ``GET /metrics`` with ``metrics``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import stat
import time
from typing import Any, Callable

from ..address import format_address
from ..connection import ConnectionOptions
from ..errors import CloseReason
from ..loop import Loop
from ..sockets import bind_listening
from ..wakeup import drain_on_signals
from ..protocols import Codec, Handler
from ..stats import STATS_VERSION, aggregate
from .metrics import serve_metrics
from .stats_socket import WholeReply, advertised_path, serve_stats
from .systemd import Activation, SystemdLink, listen_fds

__all__ = ["ServerConfig", "activated_socket", "bind_sockets", "run_server", "format_address"]

log = logging.getLogger("reactor")

_RESTART_BACKOFF_MAX_S = 5.0
_KILL_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How to serve. ``address`` is ``(host, port)`` or a unix socket path.

    The connection limits (``max_conns``, ``max_conns_per_ip``, ``accept_rate``)
    apply in each worker: see ``Loop.listen``.
    """

    address: tuple[str, int] | str
    workers: int = 1
    backlog: int = 1024
    max_conns: int | None = None
    reject_message: bytes | None = None
    max_conns_per_ip: int = 0
    per_ip_reject_message: bytes | None = None
    accept_rate: float = 0.0
    drain_timeout_s: float = 10.0
    stats_socket: str | None = None
    #: Serve the stats document at all. Without ``stats_socket`` it is served at the
    #: advertised path (``stats.advertised_path``: one per process, workers included), so
    #: ``fd-stats PID`` finds it, and the supervisor finds its workers', unasked.
    stats: bool = True
    options: ConnectionOptions = dataclasses.field(default_factory=ConnectionOptions)
    chunk_size: int = 16 * 1024
    pool_chunks: int = 4096  #: chunks mapped at start (the pool's first arena)
    max_buffer_bytes: int = 1 << 30  #: the pool's cap, per worker (Loop pool_max_chunks)
    #: Connections' timers are rounded onto a grid this far apart (Loop timer_grain_s); with
    #: workers, each worker's grid is offset by index / workers of it, so they wake in turn.
    timer_grain_s: float = 0.01
    #: Serve ``GET /metrics`` (Prometheus) on this ``(host, port)``: in the main process; with
    #: workers, every worker's figures under a ``worker`` label (metrics.py).
    metrics: tuple[str, int] | None = None


def activated_socket(name: str) -> socket.socket | None:
    """The listening socket systemd passed (socket activation: LISTEN_PID, LISTEN_FDS,
    LISTEN_FDNAMES), the one named ``name`` if several; None when not activated. OSError
    when activated with no listening stream socket among the fds. The variables are
    removed from the environment, so workers do not take them for their own."""
    got = listen_fds()
    if got.status is not Activation.ACTIVATED:
        if got.status is not Activation.NOT_ACTIVATED:
            log.warning("socket activation ignored: %s", got.reason)
        return None
    usable = [s for s in got if s.socket is not None and s.is_listening
              and s.kind == socket.SOCK_STREAM]
    chosen = [s for s in usable if s.name == name] or usable
    if not chosen:
        raise OSError(f"socket activation: none of the {len(got)} fd(s) systemd passed is a "
                      "listening stream socket")
    return chosen[0].socket


def bind_sockets(address: tuple[str, int] | str, workers: int = 1,
                 backlog: int = 1024) -> list[socket.socket]:
    """Bind and listen; one socket per worker for TCP with workers > 1, else one.

    Workers share a TCP port through SO_REUSEPORT. SO_REUSEPORT would also let
    this daemon silently join another process's port, so the address is first
    claimed by a probe socket *without* it: if anyone holds the port, that bind
    fails and so do we. Raises OSError (e.g. EADDRINUSE, EACCES).
    """
    if isinstance(address, str) or workers == 1:
        return [bind_listening(address, backlog)]
    host, port = address
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    probe = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(info[4])
        bound = probe.getsockname()
    finally:
        probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            socks.append(bind_listening((bound[0], bound[1]), backlog, reuse_port=True))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def run_server(
    config: ServerConfig,
    handler_factory: Callable[[], Handler],
    codec_factory: Callable[[], Codec],
    sockets: list[socket.socket],
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT and a drain; returns the exit status (0).

    ``on_ready`` runs once everything listens (the stats socket included).
    Raises OSError if the stats socket cannot be bound.
    """
    if config.workers > 1:
        return _Supervisor(config, handler_factory, codec_factory, sockets).run(on_ready)
    return _serve_one(config, handler_factory, codec_factory, sockets[0], stats=True,
                      on_ready=on_ready)


def _worker_stats_path(config: ServerConfig, index: int) -> str | None:
    """Where worker ``index`` serves its stats: ``PATH.workerI`` beside an explicit
    ``--stats-socket PATH``, else None (its own advertised path, keyed by its pid)."""
    return f"{config.stats_socket}.worker{index}" if config.stats_socket else None


def _serve_stats(loop: Loop, config: ServerConfig, path: str | None, **kw: Any) -> None:
    """Serve the stats socket. An explicit path that cannot be bound is the caller's error
    (OSError); the default, advertised one only warns: stats never keep a service down."""
    if not config.stats:
        return
    if path is not None:
        serve_stats(loop, path, **kw)
        return
    try:
        serve_stats(loop, None, **kw)
    except OSError as exc:
        log.warning("no stats socket: %s", exc)


def _serve_one(config: ServerConfig, handler_factory: Callable[[], Handler],
               codec_factory: Callable[[], Codec], sock: socket.socket, *,
               stats: bool, worker: int | None = None,
               on_ready: Callable[[], None] | None = None) -> int:
    max_chunks = max(1, config.max_buffer_bytes // config.chunk_size)
    grain = config.timer_grain_s
    loop = Loop(chunk_size=config.chunk_size, pool_chunks=min(config.pool_chunks, max_chunks),
                pool_max_chunks=max_chunks, timer_grain_s=grain,
                timer_phase_s=grain * (worker or 0) / config.workers)
    link: SystemdLink | None = None
    try:
        loop.listen(sock.getsockname(), handler_factory, codec_factory, sock=sock,
                    backlog=config.backlog, max_conns=config.max_conns,
                    reject_message=config.reject_message,
                    max_conns_per_ip=config.max_conns_per_ip,
                    per_ip_reject_message=config.per_ip_reject_message,
                    accept_rate=config.accept_rate, options=config.options)
        _serve_stats(loop, config, config.stats_socket if stats else
                     _worker_stats_path(config, worker or 0))
        if worker is None:  # the main process; a worker's supervisor speaks for it
            if config.metrics is not None:
                serve_metrics(loop, config.metrics)
            link = SystemdLink.from_environ(
                loop, status=lambda: f"{loop.connection_count} connections")
        def draining(signame: str) -> None:
            log.info("%s: draining %d connection(s) (up to %g s)", signame,
                     loop.connection_count, config.drain_timeout_s)
            if link is not None:
                link.stopping(f"draining {loop.connection_count} connections")

        drain_on_signals(loop, config.drain_timeout_s, before=draining)
        log.info("serving on %s (%s%s)", format_address(sock.getsockname()),
                 loop.selector_name, f", worker {worker}" if worker is not None else "")
        if on_ready is not None:
            on_ready()
        if link is not None:
            link.ready()
        loop.run()
    finally:
        if link is not None:
            link.close()
        loop.close()
    return 0


class _Supervisor:
    """The parent of ``workers`` processes: forks, restarts, forwards signals."""

    def __init__(self, config: ServerConfig, handler_factory: Callable[[], Handler],
                 codec_factory: Callable[[], Codec], sockets: list[socket.socket]) -> None:
        self.config = config
        self.handler_factory = handler_factory
        self.codec_factory = codec_factory
        self.sockets = sockets
        self.loop = Loop(pool_chunks=16)
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> start time
        self.backoff: dict[int, float] = {}
        self.stopping = False
        self.signals = 0
        self.restarts = 0
        self.link: SystemdLink | None = None

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        loop = self.loop
        try:
            _serve_stats(loop, self.config, self.config.stats_socket,
                         provider=self._gather_stats)
            if self.config.metrics is not None:
                serve_metrics(loop, self.config.metrics, provider=self._gather_stats)
            self.link = SystemdLink.from_environ(
                loop, status=lambda: f"{len(self.children)} of {self.config.workers} workers")
            if on_ready is not None:
                on_ready()
            loop.add_signal_handler(signal.SIGCHLD, self._reap)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
            for i in range(self.config.workers):
                self._spawn(i)
            self.link.ready()
            loop.run()
        finally:
            if self.link is not None:
                self.link.close()
            for pid in list(self.children):
                _kill(pid, signal.SIGKILL)
            self._reap_all(block=True)
            loop.close()
        return 0

    def _gather_stats(self, reply: Callable[[dict[str, Any]], None]) -> None:
        """Ask every worker for its document (asynchronously, 2 s at most), then reply
        with their totals and one entry per worker."""
        workers = sorted((i, pid) for pid, i in self.children.items())
        got: dict[int, dict[str, Any]] = {}
        pending = {i for i, _ in workers}
        state = {"done": False}

        def finish() -> None:
            if state["done"]:
                return
            state["done"] = True
            self.loop.cancel_timer(timer)
            entries = []
            for i, pid in workers:
                doc = got.get(i)
                entries.append({"index": i, "pid": pid, **(doc if doc is not None else
                                                           {"error": "no answer"})})
            totals = aggregate([d for d in got.values()])
            reply({"version": STATS_VERSION, "pid": os.getpid(), "role": "supervisor",
                   "uptime_s": round(self.loop.time() - self.loop.started_at, 3),
                   "restarts": self.restarts, **totals, "workers": entries})

        def answered(i: int, doc: dict[str, Any] | None) -> None:
            if doc is not None:
                got[i] = doc
            pending.discard(i)
            if not pending:
                finish()

        timer = self.loop.call_later(2.0, finish)
        if not workers:
            finish()
        for i, pid in workers:
            path = _worker_stats_path(self.config, i) or advertised_path(pid)
            self.loop.connect(path, functools.partial(_Gather, answered, i), WholeReply,
                              timeout_s=2.0)

    def _spawn(self, index: int) -> None:
        sock = self.sockets[index if len(self.sockets) > 1 else 0]
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self.loop.close_after_fork()
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent, which forwards it
                _die_with_parent()
                for s in self.sockets:
                    if s is not sock:
                        s.close()
                code = _serve_one(self.config, self.handler_factory, self.codec_factory, sock,
                                  stats=False, worker=index)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def _reap(self) -> None:
        for pid, status in self._reap_all(block=False):
            index = self.children.pop(pid, None)
            if index is None:
                continue
            if self.stopping:
                log.info("worker %d (pid %d) exited", index, pid)
                continue
            why = (f"signal {signal.Signals(-status).name}" if status < 0
                   else f"status {status}")
            lived = time.monotonic() - self.started.get(index, 0.0)
            delay = 0.0 if lived > 1.0 else min(_RESTART_BACKOFF_MAX_S,
                                               max(0.1, 2 * self.backoff.get(index, 0.0)))
            self.backoff[index] = delay
            log.warning("worker %d (pid %d) died (%s); restarting in %.1f s", index, pid, why,
                        delay)
            self.restarts += 1
            self.loop.call_later(delay, self._respawn, index)
        if self.stopping and not self.children:
            self.loop.stop()

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.children.values():
            self._spawn(index)

    def _reap_all(self, block: bool) -> list[tuple[int, int]]:
        out = []
        while self.children:
            try:
                pid, raw = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.children.get(pid)
            if index is not None and self.config.stats:
                _drop_advert(pid, _worker_stats_path(self.config, index))
            out.append((pid, os.waitstatus_to_exitcode(raw)))
            if block:
                self.children.pop(pid, None)
        return out

    def _on_signal(self, signame: str) -> None:
        self.signals += 1
        self.stopping = True
        for pid in self.children:
            _kill(pid, signal.SIGTERM)
        if self.signals == 1:
            log.info("%s: stopping %d worker(s)", signame, len(self.children))
            if self.link is not None:
                self.link.stopping(f"stopping {len(self.children)} workers")
            self.loop.call_later(self.config.drain_timeout_s + _KILL_GRACE_S, self._kill_all)
        else:
            self.loop.call_later(1.0, self._kill_all)
        if not self.children:
            self.loop.stop()

    def _kill_all(self) -> None:
        for pid in self.children:
            _kill(pid, signal.SIGKILL)


class _Gather(Handler):
    """Reads one worker's stats document (the whole reply, until EOF)."""

    def __init__(self, answered: Callable[[int, dict[str, Any] | None], None], index: int):
        self.answered = answered
        self.index = index
        self.doc: dict[str, Any] | None = None

    def on_eof(self, conn: Any, remainder: bytes) -> bool:
        try:
            doc = json.loads(remainder)
            self.doc = doc if isinstance(doc, dict) else None
        except ValueError:
            self.doc = None
        return False

    def on_close(self, conn: Any, reason: CloseReason) -> None:
        self.answered(self.index, self.doc)


def _drop_advert(pid: int, path: str | None) -> None:
    """Remove a dead worker's advertisement of its stats socket ``path`` (None: the socket
    itself sits at the advertised path): a worker killed outright (SIGKILL) could not, and
    the pid may be reused."""
    advert = advertised_path(pid)
    try:
        if path is None:
            if stat.S_ISSOCK(os.lstat(advert).st_mode):
                os.unlink(advert)
        elif os.readlink(advert) == os.path.abspath(path):
            os.unlink(advert)
    except OSError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """Linux: ask for SIGTERM when the supervisor dies, so workers never outlive it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
