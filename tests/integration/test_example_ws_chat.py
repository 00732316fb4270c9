"""docs/examples/ws_chat.py, black-box: the example as a subprocess, the real ``websockets``
client library (its asyncio client) as the peers, plus raw sockets for what no WebSocket
client does (a plain HTTP GET, a client that never reads)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

from tests.conftest import ROOT, recv_until_eof
from tests.integration.example_proc import EXAMPLES, Example, example_fixture

EXAMPLE = EXAMPLES / "ws_chat.py"
#: Every scenario ends within this, or fails instead of hanging.
SCENARIO_TIMEOUT_S = 15.0


class ChatServer(Example):
    """The example; WebSocket clients connect to ``url``."""

    def __init__(self, *args: str) -> None:
        super().__init__("ws_chat.py", *args)
        self.url = "ws://%s:%d/" % self.address

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.kill()  # no drain at a test's end: it would wait for clients left open
        return self.wait(timeout)


chat = example_fixture(ChatServer)


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario, SCENARIO_TIMEOUT_S))


async def join(server: ChatServer, n: int) -> list[ClientConnection]:
    """``n`` clients in the room (the server sends the 101 from the call that adds a client
    to the room, so each is a member once ``connect`` returns), each checked with a ping."""
    clients = [await connect(server.url, proxy=None, ping_interval=None, compression=None)
               for _ in range(n)]
    for ws in clients:
        await asyncio.wait_for(await ws.ping(), 5)
    return clients


async def nothing_more(ws: ClientConnection) -> None:
    """No message is waiting for ``ws``: after a ping round trip (the server sends in order,
    so anything relayed to it before has arrived), a receive finds nothing."""
    await asyncio.wait_for(await ws.ping(), 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.05)  # cancelling recv loses nothing (websockets)


def test_help_exits_0():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True,
                          timeout=30, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0
    out = done.stdout.decode()
    for option in ("--host", "--port", "--idle-timeout", "--max-message", "--write-timeout"):
        assert option in out


def payloads(sender: int) -> list[str | bytes]:
    """What one client says: text of every length class a frame header has (7-bit, 16-bit),
    non-ASCII, and binary holding every byte value."""
    said: list[str | bytes] = []
    for i in range(40):
        if i % 10 == 9:
            said.append(bytes([sender, i]) + bytes(range(256)) * (1 + i // 10))
        else:
            said.append(f"{sender}:{i}:" + "é€😀x"[i % 4] * (i * 7 % 300))
    said.append(f"{sender}:last:" + "y" * 9000)
    return said


def test_every_message_reaches_every_other_client_exactly_and_in_order(chat):
    server = chat()

    async def scenario() -> None:
        clients = await join(server, 3)
        said = [payloads(i) for i in range(3)]

        async def talk(i: int) -> None:
            for msg in said[i]:
                await clients[i].send(msg)

        async def listen(i: int) -> list[str | bytes]:
            want = sum(len(s) for j, s in enumerate(said) if j != i)
            return [await clients[i].recv() for _ in range(want)]

        heard = (await asyncio.gather(*(listen(i) for i in range(3)),
                                      *(talk(i) for i in range(3))))[:3]
        for i, got in enumerate(heard):
            for j in range(3):  # from each other client: all of it, in order, byte for byte
                if j != i:
                    assert [m for m in got if sender_of(m) == j] == said[j]
            assert not [m for m in got if sender_of(m) == i]  # never its own
            await nothing_more(clients[i])
        for ws in clients:
            await ws.close()

    run(scenario())


def sender_of(msg: str | bytes) -> int:
    return msg[0] if isinstance(msg, bytes) else int(msg.split(":", 1)[0])


def test_a_ping_from_a_client_is_answered(chat):
    server = chat()

    async def scenario() -> None:
        async with connect(server.url, proxy=None, ping_interval=None) as ws:
            latency = await asyncio.wait_for(await ws.ping(b"hello?"), 5)
            assert latency >= 0

    run(scenario())


def test_a_message_over_the_cap_closes_its_sender_with_1009_and_the_others_chat_on(chat):
    server = chat("--max-message", "1000")

    async def scenario() -> None:
        big, other, third = await join(server, 3)
        await big.send("x" * 1000)  # exactly the cap: relayed
        assert await other.recv() == "x" * 1000 and await third.recv() == "x" * 1000
        await big.send("y" * 1001)
        with pytest.raises(ConnectionClosedError):
            await big.recv()
        assert big.close_code == 1009
        assert "exceeds max_message 1000" in big.close_reason
        await other.send("still here")
        assert await third.recv() == "still here"
        await third.send(b"and here")
        assert await other.recv() == b"and here"
        await nothing_more(other)  # and nothing of the refused message got through
        await nothing_more(third)

    run(scenario())
    server.logged("failing the connection with 1009")


def test_a_client_initiated_close_completes_cleanly(chat):
    server = chat()

    async def scenario() -> None:
        leaving, staying, other = await join(server, 3)
        await leaving.close()
        assert leaving.close_code == 1000
        await staying.send("after the close")
        assert await other.recv() == "after the close"
        await nothing_more(staying)

    run(scenario())
    server.logged("left (1000)")


def test_a_plain_http_get_gets_an_http_error_and_a_close(chat):
    server = chat()
    with socket.create_connection(server.address, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = recv_until_eof(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 426 ", head), answer
    assert b"\r\nUpgrade: websocket" in head and b"\r\nConnection: close" in head
    assert body.startswith(b"426: this is a WebSocket endpoint")


def test_sigterm_closes_every_client_with_1001_and_exits_0(chat):
    server = chat()

    async def scenario() -> None:
        clients = await join(server, 3)
        server.proc.send_signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")

    run(scenario())
    assert server.wait(10) == 0
    assert "SIGTERM: closing 3 client(s)" in server.log_text()


def test_an_idle_client_is_closed_with_1001(chat):
    server = chat("--idle-timeout", "0.5")

    async def scenario() -> None:
        quiet, talking = await join(server, 2)

        async def keep_talking() -> None:  # what it sends restarts its own idle clock
            while True:
                await talking.send("keeping busy")
                await asyncio.sleep(0.1)

        started = time.monotonic()
        task = asyncio.create_task(keep_talking())
        with pytest.raises(ConnectionClosedOK):
            while True:
                assert await quiet.recv() == "keeping busy"  # then the Close
        task.cancel()
        assert (quiet.close_code, quiet.close_reason) == (1001, "idle timeout")
        assert 0.4 < time.monotonic() - started < 3
        assert talking.close_code is None  # still open
        await talking.send("still here")
        await nothing_more(talking)

    run(scenario())


def handshake(address: tuple[str, int]) -> socket.socket:
    """A WebSocket client by hand that reads the 101 and then never reads again, with a small
    receive buffer so that the server's bytes pile up quickly."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(address)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    return s


def test_a_client_that_never_reads_is_skipped_then_closed_without_holding_others_back(chat):
    server = chat("--write-timeout", "1")
    slow = handshake(server.address)
    try:
        async def scenario() -> None:
            talker, reader = await join(server, 2)
            chunk = "m" * 8000
            sent = 0
            started = time.monotonic()
            # Until the slow client is closed, and at least 4 MB: far more than its kernel
            # buffers and the server's watermark hold. The reader keeps up, a window apart.
            # (Under another test's TCP memory pressure the slow one's kernel may drop what it
            # cannot hold, which the write deadline excuses for 30 s at most: hence 45 s.)
            while sent < 500 or "slow consumer" not in server.log_text():
                assert time.monotonic() - started < 45, "the slow client was never closed"
                for _ in range(8):
                    await talker.send(f"{sent}:{chunk}")
                    sent += 1
                for n in range(sent - 8, sent):
                    assert await reader.recv() == f"{n}:{chunk}"  # none skipped, in order
            await nothing_more(reader)
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await reader.recv()

        run(scenario())
    finally:
        slow.close()
    assert server.wait(10) == 0
    log = server.log_text()
    assert "fell behind: messages to it are skipped" in log
    skipped = int(re.search(r"(\d+) deliveries skipped", log)[1])
    assert skipped > 0 and "1 clients closed as slow consumers" in log
