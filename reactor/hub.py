"""Hub: the named interface between the loop and what it drives.

A loop drives objects that own one fd each: connections, listeners, its own
waker. They and the loop meet here and nowhere else. The loop makes one ``Hub``
(``loop.hub``); a connection or listener holds the hub, never the loop's own
fields, and the loop asks of them only what ``Driven`` and ``Driver`` below name.
No module but loop.py touches a private attribute of ``Loop``
(tests/unit/test_architecture.py checks it).

What a connection or listener may ask of its loop (the fields of ``Hub``):

* facts set by the loop: ``now`` (its clock, read once per iteration: a cheap
  timestamp), ``edge`` (edge-triggered epoll?), ``share`` (the fair share of
  buffer memory per connection, kept by the loop as connections come and go),
  ``shutting_down``, ``nconns``;
* the loop's parts: ``clock``, ``wheel`` (timers), ``selector`` (for
  level-triggered interest only), ``pool`` and the read settings
  ``read_budget``/``read_keep``;
* queues the loop serves each iteration: append to ``ready`` to be called
  ``_on_ready`` next iteration with no edge (edge-triggered invariant 2 in
  reading.py), to ``flushq`` to have ``_flush_due`` called at its end, to
  ``starved`` to get ``_unstarve`` once the pool has chunks again, to
  ``accepting`` (listeners) for another accept turn;
* shared buffers, allocated once per loop: empty rings (``take_ring``,
  ``ring_free``), ``scratch`` (bytes read to be discarded), ``scratch_ring`` and
  ``flat`` (where reads land before they are decoded);
* counters, kept here so stats read them without asking anyone: ``accepted_total``,
  ``closed_by_reason``, ``broadcast_skipped``, ``iterations``, ``events``; and
  ``bytes_in``, ``bytes_out`` of the connections that closed (a live connection counts its
  own, added up only when stats are read: the per-event path pays one counter, not two);
* calls the loop answers: ``attach`` (make an accepted socket a Connection,
  register it and count it; returns the Connection), ``forget`` (an object
  closed: unregister its fd, settle the books), ``call_soon`` (as
  ``Loop.call_soon``; its ``Handle`` is defined here), ``count_close`` (a connection
  refused before it became one), ``new_id``; and ``on_forget``, a hook per fd run
  when that fd is forgotten (a listener's per-address count).

Nothing here imports the loop, the connection or the listener: the hub sits
below all three, so the import graph stays acyclic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from .pool import MIN_SHARE, BufferPool
from .ring import RingBuffer

#: A partial frame up to this size is kept between reads as ``bytes`` in front of the next
#: read (reading.py), anything longer in the connection's own pooled ring.
SMALL_REST = 1024
#: Reads one connection may make per turn before the others are served (Netty's
#: maxMessagesPerRead, 16): with 64 KiB shares 1 MiB, with 4 KiB shares (thousands of
#: connections on a small pool) 64 KiB, so a turn of the loop stays short however many flood.
READS_PER_TURN = 16

if TYPE_CHECKING:  # pragma: no cover
    from .clock import Clock
    from .errors import CloseReason
    from .selector import EdgeSelector, LevelSelector
    from .wheel import TimerWheel

__all__ = ["Driven", "Driver", "Handle", "Hub"]


class Driven(Protocol):
    """What the loop asks of every object it holds an fd for."""

    def fileno(self) -> int: ...

    def _on_events(self, ev: int) -> None:
        """One epoll event for this fd (``ev``: its mask)."""

    def _on_ready(self) -> None:
        """Called for an object that put itself on ``Hub.ready`` (or ``accepting``)."""


class Driver(Driven, Protocol):
    """What the loop asks of a connection besides ``Driven``."""

    #: Counted in the loop's books (connection_count, close reasons, stats)?
    counted: bool

    def _flush_due(self) -> None:
        """It put itself on ``Hub.flushq``: send what it queued, if still due."""

    def _unstarve(self) -> None:
        """The pool has chunks again (it was on ``Hub.starved``)."""

    def _begin_drain(self) -> None:
        """``Loop.shutdown``: deliver what the kernel holds now, then close."""

    def _opened(self) -> None:
        """It is established (accepted, or its connect finished): start timers, tell the handler."""

    def _connect_failed(self, exc: OSError) -> None:
        """Its outgoing connect failed at once (``Loop.connect``)."""

    def abort(self, reason: CloseReason) -> None: ...


class Handle:
    """A callback queued with ``call_soon``; ``cancel()`` before it runs to drop it."""

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Hub:
    """The state a loop shares with its connections and listeners (see the module doc)."""

    __slots__ = (
        "clock", "wheel", "selector", "edge", "pool", "read_budget", "turn_budget", "read_keep",
        "now", "share", "shutting_down", "nconns",
        "ready", "flushq", "starved", "accepting", "outq_seen",
        "ring_free", "scratch", "scratch_ring", "flat", "flat_mv", "conn_classes",
        "bytes_in", "bytes_out", "accepted_total", "closed_by_reason", "broadcast_skipped",
        "iterations", "events", "stats_marks", "next_id", "tls_handshakes", "tls_failures",
        "_cipher",
        "attach", "forget", "watch", "call_soon", "on_forget",
    )

    def __init__(self, clock: Clock, wheel: TimerWheel, selector: EdgeSelector | LevelSelector,
                 pool: BufferPool, read_budget: int, read_size: int, read_keep: int,
                 closed_by_reason: dict[CloseReason, int]) -> None:
        self.clock = clock
        self.wheel = wheel
        self.selector = selector
        self.edge: bool = selector.edge_triggered
        self.pool = pool
        self.read_budget = read_budget  # bytes one connection may read per turn, at most
        # What it may read per turn now: READS_PER_TURN shares, within read_budget (Loop._reshare)
        self.turn_budget = read_budget
        self.read_keep = read_keep  # chunks kept back from reads for sends at the pool's cap
        self.now = clock.now()
        self.share = 0  # the fair share of buffer memory per connection (Loop._reshare)
        self.shutting_down = False
        self.nconns = 0
        self.ready: list[Driven] = []
        self.flushq: list[Driver] = []
        self.starved: list[Driver] = []
        self.accepting: list[Driven] = []  # listeners whose accept budget ran out
        # Connections past their write deadline whose kernel send queue is being watched
        # for progress (Connection._write_stalled): the queue's size at the last look, the
        # connection's _last_tx then (a send since makes that look stale), and since when
        # only lost segments have excused it (lifecycle._LOSS_GRACE_S).
        self.outq_seen: dict[Any, tuple[int, float, float]] = {}
        self.ring_free: list[RingBuffer] = []  # empty rings, lent to connections on demand
        self.scratch = bytearray(64 * 1024)  # discarded reads (lingering, rejects)
        # What one read needs: a short partial frame in front, one recv of at most
        # ``read_size`` bytes behind it (the per-turn ``read_budget`` is several reads).
        one_read = max(read_size, MIN_SHARE) + SMALL_REST  # a share is never below MIN_SHARE
        # One buffer every connection reads into (the ring read path, reading.py); its own
        # one-chunk pool, so it never competes with the connections' chunks.
        self.scratch_ring = RingBuffer(BufferPool(one_read, 1))
        # The flat buffer of the batch fast path (the flat read path, reading.py): one recv_into,
        # one rfind by the codec, one copy of the complete frames out; allocated once.
        self.flat = bytearray(one_read)
        self.flat_mv = memoryview(self.flat)
        # (Connection class, read path) -> its subclass holding this hub (connection.py)
        self.conn_classes: dict[tuple[type, int], type] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.accepted_total = 0
        self.closed_by_reason = closed_by_reason
        self.broadcast_skipped = 0
        self.iterations = 0
        self.events = 0
        self.stats_marks: list[tuple[float, dict[str, int]]] = []  # stats.py's rate marks
        self.next_id = 0
        self.tls_handshakes = 0  # TLS handshakes completed (reactor/tls.py)
        self.tls_failures: dict[str, int] = {}  # failed handshakes by reason (tls.failure_reason)
        self._cipher: memoryview | None = None
        # Set by the loop: attach(sock, handler, codec, opts, counted) -> Connection, and
        # forget(obj) for an object that closed (called before its socket is closed).
        self.attach: Callable[..., Any] = _unset
        self.forget: Callable[[Any], None] = _unset
        # watch(fd, obj): register fd for read edges, dispatched to obj (an accepted socket
        # that is not a connection yet: preamble.py); hub.forget(obj) undoes it.
        self.watch: Callable[[int, Any], None] = _unset
        self.call_soon: Callable[..., Handle] = _unset  # Loop.call_soon
        # fd -> what to run when that fd's connection is forgotten
        self.on_forget: dict[int, Callable[[], None]] = {}

    def cipher_buffer(self) -> memoryview:
        """The loop's buffer for TLS ciphertext on its way into an SSL object (tls.py), made
        when the first TLS connection needs it."""
        if self._cipher is None:
            self._cipher = memoryview(bytearray(64 * 1024))
        return self._cipher

    def take_ring(self) -> RingBuffer:
        """An empty ring for a connection that is about to hold bytes."""
        free = self.ring_free
        return free.pop() if free else RingBuffer(self.pool)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def count_close(self, reason: CloseReason) -> None:
        self.closed_by_reason[reason] += 1


def _unset(*args: Any) -> Any:  # pragma: no cover - the loop sets these at once
    raise RuntimeError("this hub has no loop")
