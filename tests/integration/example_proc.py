"""One of docs/examples/*.py run as a subprocess, for the examples' black-box tests.

``Example("chat.py", "--idle-timeout", "1")`` runs ``docs/examples/chat.py --port 0 ...`` with
this interpreter, importing this checkout's ``reactor``, and waits (with a deadline) for the
``WHAT on ADDRESS`` lines the example prints on stdout once it serves: ``listening on
HOST:PORT`` (``address``), and for push.py also ``publishing on ...`` (``at["publishing"]``).
Its stderr log is collected line by line by a thread, so it never fills a pipe;
``logged(text)`` waits for a line holding ``text``. ``stop()`` sends SIGTERM, kills it if it
does not end in time, and returns its exit code; so does leaving a ``with`` block.
``example_fixture(factory)`` makes a pytest fixture of it, and ``Lines`` reads a client
socket line by line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import IO, Callable, Iterator

import pytest

from tests.conftest import ROOT, connect_to, parse_address, terminate, wait_for

EXAMPLES = ROOT / "docs" / "examples"


class Example:
    """``docs/examples/NAME`` on an ephemeral port, started and waited for; see the module."""

    def __init__(self, name: str, *args: str, announces: tuple[str, ...] = ("listening",),
                 timeout: float = 15.0) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.out: list[str] = []
        self.log: list[str] = []
        self._readers = [threading.Thread(target=_collect, args=pair, daemon=True)
                         for pair in ((self.proc.stdout, self.out), (self.proc.stderr, self.log))]
        for t in self._readers:
            t.start()
        try:
            wait_for(lambda: len(self.out) >= len(announces) or self.proc.poll() is not None,
                     timeout, f"{name} to print {announces}")
        except AssertionError:
            self.stop()
            raise
        self.at = {word: parse_address(line[len(word) + 4:])
                   for word, line in zip(announces, self.out) if line.startswith(f"{word} on ")}
        if len(self.at) < len(announces):
            self.stop()
            raise AssertionError(f"{name} did not start: {self.out} {self.log_text()}")
        self.address = self.at["listening"]

    def connect(self, at: str = "listening", timeout: float = 10.0) -> socket.socket:
        return connect_to(self.at[at], timeout)

    def log_text(self) -> str:
        return "\n".join(self.log)

    def logged(self, text: str, timeout: float = 10.0) -> str:
        """The first line of the log holding ``text``, waited for."""
        return wait_for(lambda: next((ln for ln in self.log if text in ln), None), timeout,
                        f"{text!r} in {self.name}'s log (so far: {self.log[-5:]})")  # type: ignore

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to end (and its log to be read to the end); its exit code."""
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> int:
        terminate(self.proc, timeout)
        return self.wait()

    def __enter__(self) -> Example:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _collect(stream: IO[bytes], lines: list[str]) -> None:
    with stream:
        for raw in stream:
            lines.append(raw.decode(errors="replace").rstrip("\n"))


def example_fixture(factory: Callable[..., Example]):
    """A pytest fixture (named by the module attribute it is assigned to): call it with
    arguments to start ``factory(*args)``; all it started are stopped at the test's end."""

    @pytest.fixture
    def fixture() -> Iterator[Callable[..., Example]]:
        started: list[Example] = []

        def start(*args: str) -> Example:
            started.append(factory(*args))
            return started[-1]

        yield start
        for example in started:
            example.stop()

    return fixture


class Lines:
    """A client socket read line by line, or by byte count, keeping what it read ahead."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"EOF; holding {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def exactly(self, n: int, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise AssertionError(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
