"""Faults inside one process: handler callbacks, timers and codecs that raise.

Each test runs an in-process Loop on real sockets, in both selector modes, with
bystander connections streaming lines through the loop while a victim's handler,
a timer or a codec fails. What must hold: the victim closes with the documented
reason after what it had queued has reached its peer, the error is logged once,
and every bystander gets every byte back, during the fault and after it.
(``on_message`` raising is test_connection.py's
``test_handler_exception_closes_only_that_connection``.)
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from typing import Any, Callable

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, Handler, Loop
from reactor.errors import CodecError
from tests.conftest import wait_for

MODES = ["edge", "level"]
#: The victim's answer to a ``flood`` line: far above the 64 KiB high watermark.
FLOOD = b"".join(b"flood %07d\n" % i for i in range(80_000))


def lines(tag: str, n: int) -> bytes:
    return b"".join(b"%s %05d %s\n" % (tag.encode(), i, b"y" * (i % 61)) for i in range(n))


class Peer:
    """A client of the in-process loop, pumped without blocking: sends what is queued,
    keeps what comes back, and closes at EOF (so the server's linger ends at once)."""

    def __init__(self, addr: Any) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.sent = bytearray()  # everything queued so far: what a line echo owes us
        self.got = bytearray()
        self.shut_pending = False
        self.eof = False  # the server closed; so did we

    def close(self) -> None:
        self.eof = True
        self.sock.close()

    def queue(self, data: bytes, shut: bool = False) -> None:
        self.out += data
        self.sent += data
        self.shut_pending = shut

    def pump(self) -> None:
        if self.eof:
            return
        try:
            if self.out:
                del self.out[:self.sock.send(self.out[:65536])]
            elif self.shut_pending:
                self.shut_pending = False
                self.sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            pass
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                self.close()
                return
            self.got += data


class Scene:
    """One loop: three bystanders on a line-echo listener, streaming lines from the start,
    and (if a victim handler is given) a victim peer on a second listener."""

    def __init__(self, mode: str, victim: Handler | None = None,
                 codec: Callable[[], Any] = LineCodec, **victim_options: Any) -> None:
        self.loop = Loop(selector=mode)
        echo = self.loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec)
        self.bystanders = [Peer(echo.address) for _ in range(3)]
        for i, p in enumerate(self.bystanders):
            p.queue(lines(f"before{i}", 3000))  # ~130 KiB each: several turns of the loop
        self.victim: Peer | None = None
        if victim is not None:
            lst = self.loop.listen(("127.0.0.1", 0), lambda: victim, codec, **victim_options)
            self.victim = Peer(lst.address)

    def step(self) -> None:
        self.loop.run_once(0.002)
        for p in self.bystanders:
            p.pump()
        if self.victim is not None:
            self.victim.pump()

    def run_until(self, predicate: Callable[[], object], what: str) -> None:
        wait_for(predicate, 10, what, step=self.step)

    def bystanders_echo_everything(self) -> None:
        """More lines after the fault; then every byte each bystander sent must be back."""
        for i, p in enumerate(self.bystanders):
            p.queue(lines(f"after{i}", 1000))
        self.run_until(lambda: all(len(p.got) >= len(p.sent) for p in self.bystanders),
                       "every bystander's echo")
        for p in self.bystanders:
            assert bytes(p.got) == bytes(p.sent)
            p.close()
        self.run_until(lambda: self.loop.connection_count == 0, "every connection closed")
        assert self.loop.pool.chunks_in_use == 0

    def close(self) -> None:
        self.loop.close()


def logged(caplog, text: str) -> list[logging.LogRecord]:
    """The records that carry ``text``, in their message or in their exception."""
    return [r for r in caplog.records
            if text in r.getMessage() or (r.exc_info and text in str(r.exc_info[1]))]


class Victim(Handler):
    """Echoes each line (a ``flood`` line gets FLOOD) and raises in the callback ``fail_in``."""

    def __init__(self, fail_in: str | None) -> None:
        self.fail_in = fail_in
        self.raised = 0
        self.closed: list[CloseReason] = []

    def _maybe_fail(self, where: str) -> None:
        if where == self.fail_in:
            self.raised += 1
            raise RuntimeError(f"injected fault in {where}")

    def on_connect(self, conn):
        self._maybe_fail("on_connect")

    def on_message(self, conn, line):
        if line == b"flood":
            # Small kernel buffers on both ends (the peer's in the test): a write over the
            # high watermark tries the kernel first, and a roomy loopback takes a whole MiB.
            conn.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            conn.write(FLOOD)
        else:
            conn.send(line)

    def on_paused(self, conn):
        self._maybe_fail("on_paused")

    def on_writable(self, conn):
        self._maybe_fail("on_writable")

    def on_idle(self, conn):
        self._maybe_fail("on_idle")
        super().on_idle(conn)

    def on_heartbeat(self, conn):
        self._maybe_fail("on_heartbeat")

    def on_eof(self, conn, remainder):
        self._maybe_fail("on_eof")
        if remainder:
            conn.write(remainder)
        return False

    def on_codec_error(self, conn, exc):
        self._maybe_fail("on_codec_error")
        super().on_codec_error(conn, exc)

    def on_close(self, conn, reason):
        self.closed.append(reason)
        self._maybe_fail("on_close")


class BatchVictim(Victim):
    """The same on the batch fast path: every complete line buffered in one call."""

    def on_batch(self, conn, data):
        self._maybe_fail("on_batch")
        conn.write(data)


class RingOnly:
    """A LineCodec without ``frames_end``: batches are decoded in the receive ring."""

    def __init__(self) -> None:
        self._codec = LineCodec()
        self.max_frame_bytes = self._codec.max_frame_bytes

    def __getattr__(self, name: str) -> Any:
        if name == "frames_end":
            raise AttributeError(name)
        return getattr(self._codec, name)


@dataclasses.dataclass
class Case:
    fail_in: str
    send: bytes = b""  # what the victim's peer sends
    shut: bool = False  # and then shuts down its sending side
    echoed: bytes = b""  # what it must get back before EOF
    handler: type[Victim] = Victim
    codec: Callable[[], Any] = LineCodec
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


CASES = {
    "on_connect": Case("on_connect"),
    "on_batch-flat": Case("on_batch", b"boom\n", handler=BatchVictim),
    "on_batch-ring": Case("on_batch", b"boom\n", handler=BatchVictim, codec=RingOnly),
    "on_eof": Case("on_eof", b"a\nb\npartial", shut=True, echoed=b"a\nb\n"),
    # The reply that pushed the send ring over high_water is flushed whole before the close.
    "on_paused": Case("on_paused", b"flood\n", echoed=FLOOD),
    "on_writable": Case("on_writable", b"flood\n", echoed=FLOOD),
    "on_idle": Case("on_idle", options={"idle_timeout_s": 0.05}),
    "on_heartbeat": Case("on_heartbeat", options={"heartbeat_s": 0.05}),
    # The line before the bad one is delivered, echoed and flushed first.
    "on_codec_error": Case("on_codec_error", b"ok\n" + b"x" * 40 + b"\n", echoed=b"ok\n",
                           codec=lambda: LineCodec(16)),
    "on_codec_error-batch": Case("on_codec_error", b"ok\n" + b"x" * 40 + b"\n",
                                 echoed=b"ok\n", handler=BatchVictim,
                                 codec=lambda: LineCodec(16)),
    "on_close": Case("on_close", b"bye\n", shut=True, echoed=b"bye\n"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_raising_callback_closes_only_its_connection(mode, case, caplog):
    caplog.set_level(logging.DEBUG, logger="reactor")
    victim = case.handler(case.fail_in)
    scene = Scene(mode, victim, case.codec, **case.options)
    try:
        if case.send == b"flood\n":
            scene.victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        scene.victim.queue(case.send, shut=case.shut)
        scene.run_until(lambda: scene.victim.eof and victim.closed, "the victim closed")
        assert bytes(scene.victim.got) == case.echoed
        assert victim.raised == 1
        records = logged(caplog, f"injected fault in {case.fail_in}")
        assert len(records) == 1 and records[0].levelno == logging.ERROR
        if case.fail_in == "on_close":  # the close was the peer's; the error changes nothing
            assert victim.closed == [CloseReason.PEER_CLOSED]
            assert "on_close raised" in records[0].getMessage()
        else:
            assert victim.closed == [CloseReason.HANDLER_ERROR]
        closed = scene.loop.stats()["closed"]
        assert closed["handler_error"] == (case.fail_in != "on_close")
        assert sum(closed.values()) == 1
        scene.bystanders_echo_everything()
    finally:
        scene.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_raising_timer_is_logged_and_other_timers_and_connections_go_on(mode, caplog):
    caplog.set_level(logging.DEBUG, logger="reactor")
    scene = Scene(mode)
    try:
        fired: list[str] = []

        def boom() -> None:
            fired.append("boom")
            raise RuntimeError("injected fault in a timer")

        loop = scene.loop
        loop.call_later(0.02, fired.append, "before")  # the same tick as boom, either side
        loop.call_later(0.02, boom)
        loop.call_later(0.02, fired.append, "beside")
        loop.call_later(0.05, fired.append, "later")
        scene.run_until(lambda: "later" in fired, "the later timer")
        assert fired == ["before", "boom", "beside", "later"]
        records = logged(caplog, "injected fault in a timer")
        assert len(records) == 1 and records[0].levelno == logging.ERROR
        assert loop.stats()["timers"]["expired"] == 4
        scene.bystanders_echo_everything()
    finally:
        scene.close()


class Garbled(CodecError):
    """A peer error of a made-up protocol: reason PROTOCOL_ERROR, CodecError's default."""


class RefusesBad(LineCodec):
    """A line codec that raises ``exc`` from maybe_take_frame at the line ``bad``."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def maybe_take_frame(self, buf):
        line = super().maybe_take_frame(buf)
        if line == b"bad":
            raise self.exc
        return line


@pytest.mark.parametrize("mode", MODES)
def test_a_codec_error_closes_that_connection_with_its_reason_after_earlier_lines(mode, caplog):
    caplog.set_level(logging.DEBUG, logger="reactor")
    victim = Victim(None)
    scene = Scene(mode, victim, lambda: RefusesBad(Garbled("injected bad frame")))
    try:
        scene.victim.queue(b"one\ntwo\nbad\nnever\n")
        scene.run_until(lambda: scene.victim.eof and victim.closed, "the victim closed")
        assert bytes(scene.victim.got) == b"one\ntwo\n"
        assert victim.closed == [CloseReason.PROTOCOL_ERROR]
        assert scene.loop.stats()["closed"]["protocol_error"] == 1
        # Bad peer input is the peer's fault: a debug line, not an error.
        assert [r.levelno for r in logged(caplog, "injected bad frame")] == [logging.DEBUG]
        scene.bystanders_echo_everything()
    finally:
        scene.close()


class BreaksOnBad(LineCodec):
    """A codec with a bug: anything but a CodecError out of maybe_take_frame or frames_end."""

    __slots__ = ()

    def maybe_take_frame(self, buf):
        line = super().maybe_take_frame(buf)
        if line == b"bad":
            raise ValueError("codec bug")
        return line

    def frames_end(self, buf, start, end):
        if b"bad\n" in bytes(buf[start:end]):
            raise ValueError("codec bug")
        return super().frames_end(buf, start, end)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [False, True], ids=["per_frame", "batch"])
def test_a_codec_bug_closes_only_its_connection_like_a_handler_bug(mode, batch, caplog):
    victim = Victim(None)
    if batch:  # LineEchoHandler's on_batch goes through frames_end
        class Batch(LineEchoHandler):
            def on_close(self, conn, reason):
                victim.closed.append(reason)
        scene = Scene(mode, Batch(), BreaksOnBad)
    else:
        scene = Scene(mode, victim, BreaksOnBad)
    try:
        scene.victim.queue(b"one\n")
        scene.run_until(lambda: len(scene.victim.got) >= 4, "the first line")
        scene.victim.queue(b"bad\nnever\n")
        scene.run_until(lambda: scene.victim.eof and victim.closed, "the victim closed")
        assert bytes(scene.victim.got) == b"one\n"
        assert victim.closed == [CloseReason.HANDLER_ERROR]
        errors = logged(caplog, "codec bug")
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR
        assert "codec" in errors[0].getMessage()
        scene.bystanders_echo_everything()
    finally:
        scene.close()
