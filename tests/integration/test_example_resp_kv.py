"""docs/examples/resp_kv.py against clients nobody here wrote: redis-py, redis-benchmark,
and raw sockets for what a client library would never send."""

from __future__ import annotations

import csv
import io
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis

from tests.conftest import ROOT, recv_exactly, recv_until_eof, wait_for
from tests.integration.example_proc import EXAMPLES, Example

EXAMPLE = EXAMPLES / "resp_kv.py"


class Server(Example):
    """resp_kv.py, with redis-py clients."""

    def __init__(self, *args: str) -> None:
        super().__init__("resp_kv.py", *args)
        self.port = self.address[1]

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, **kw)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0


@pytest.fixture
def r(server):
    client = server.client(protocol=2)
    client.flushdb()
    yield client
    client.close()


def exchange(server: Server, data: bytes, reply_len: int) -> bytes:
    with server.connect() as s:
        s.sendall(data)
        return recv_exactly(s, reply_len)


# -- (a) redis-py -----------------------------------------------------------------------


def test_redis_py_with_resp3_by_default_falls_back_to_resp2(server):
    client = server.client()  # redis-py 5+ asks HELLO 3; the NOPROTO error makes it use RESP2
    try:
        assert client.ping() is True
        assert client.set("fallback", "yes") is True and client.get("fallback") == b"yes"
    finally:
        client.close()


def test_ping_echo_set_get(server, r):
    assert r.ping() is True
    assert exchange(server, b"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n", 11) == b"$5\r\nhello\r\n"
    assert r.echo("x y") == b"x y"
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.set("k", b"\x00\r\n\xff") is True and r.get("k") == b"\x00\r\n\xff"
    assert r.set("k", "w", nx=True) is None and r.get("k") == b"\x00\r\n\xff"
    assert r.set("k2", "x", xx=True) is None and r.get("k2") is None
    assert r.set("k2", "x", nx=True) is True and r.set("k2", "y", xx=True) is True
    assert r.get("k2") == b"y"
    big = bytes(range(256)) * 4096  # 1 MiB: through the codec's ring path
    assert r.set("big", big) is True and r.get("big") == big


def test_del_exists_mget_mset_dbsize(r):
    assert r.mset({"a": "1", "b": "2", "c": "3"}) is True
    assert r.mget("a", "b", "nope", "c") == [b"1", b"2", None, b"3"]
    assert r.exists("a", "a", "nope") == 2
    assert r.delete("a", "b", "nope") == 2
    assert r.exists("a", "b") == 0
    assert r.dbsize() == 1


def test_incr_and_its_errors(r):
    assert r.incr("n") == 1
    assert r.incr("n", 41) == 42  # INCRBY
    assert r.decr("n") == 41 and r.decr("n", 40) == 1
    assert r.get("n") == b"1" and r.mget("n", "nope") == [b"1", None]  # a counter reads as bytes
    assert r.set("n", "5") is True and r.incr("n") == 6 and r.get("n") == b"6"
    r.set("s", "abc")
    for bad in ("abc", " 1", "01", "+1", "1.5", "99999999999999999999"):
        r.set("s", bad)
        with pytest.raises(redis.ResponseError) as info:
            r.incr("s")
        assert str(info.value) == "value is not an integer or out of range"
    r.set("max", str((1 << 63) - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("max")


def test_ttl_expire_and_set_ex(r):
    r.set("plain", "1")
    pipe = r.pipeline(transaction=False)  # one batch: no time passes between the two
    pipe.set("e", "1", ex=100).ttl("e").pttl("e").ttl("plain").ttl("missing")
    ok, ttl, pttl, no_ttl, missing = pipe.execute()
    assert (ok, ttl, no_ttl, missing) == (True, 100, -1, -2)
    assert 99_000 < pttl <= 100_000
    assert r.expire("plain", 50) is True and r.ttl("plain") == 50
    assert r.expire("plain", 2000) is True and r.ttl("plain") == 2000  # re-expired: rearmed
    assert r.expire("missing", 10) is False
    assert r.set("plain", "2") is True and r.ttl("plain") == -1  # SET drops the TTL
    r.expire("plain", 100)
    assert r.incr("counter") == 1 and r.expire("counter", 100) and r.incr("counter") == 2
    assert r.ttl("counter") == 100  # INCR keeps it
    assert r.expire("plain", 0) is True and r.get("plain") is None  # a past deadline deletes
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.set("bad", "1", ex=0)
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.execute_command("SET", "bad", "1", "EX", "soon")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "bad", "1", "EX", "1", "PX", "1")


def test_px_expiry_on_the_timer_wheel(r):
    pipe = r.pipeline(transaction=False)
    assert pipe.set("p", "x", px=100).get("p").execute() == [True, b"x"]
    wait_for(lambda: r.get("p") is None, 5.0, "GET p to return nil after PX 100")
    assert r.exists("p") == 0 and r.ttl("p") == -2
    # Without any access to the key, its timer alone removes it (DBSIZE does not look it up).
    r.set("q", "x", px=50)
    assert r.dbsize() == 1
    wait_for(lambda: r.dbsize() == 0, 5.0, "the timer to drop q")


def test_overwriting_or_deleting_a_key_cancels_its_expiry(r):
    r.set("o", "1", px=150)
    r.set("o", "2")  # no TTL now
    r.set("d", "1", px=150)
    r.delete("d")
    r.set("d", "fresh")  # the old timer must not delete the new key
    r.set("x", "1", px=5000)
    r.expire("x", 1)  # sooner: the same timer, rearmed
    time.sleep(0.4)  # past the first deadlines, which must no longer apply
    assert r.get("o") == b"2" and r.ttl("o") == -1
    assert r.get("d") == b"fresh"
    wait_for(lambda: r.get("x") is None, 5.0, "EXPIRE x 1 to end x")


def test_errors_keep_the_connection(r):
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("FOO", "bar", "baz")
    assert str(info.value) == "unknown command 'FOO', with args beginning with: 'bar' 'baz' "
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("GET")
    assert str(info.value) == "wrong number of arguments for 'get' command"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", "a", "1", "b")
    assert r.ping() is True


def test_pipelines_are_answered_in_order(r):
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"key:{i}", i)
        pipe.get(f"key:{i}")
        pipe.incr("ctr")
    results = pipe.execute()
    assert results == [x for i in range(3000) for x in (True, str(i).encode(), i + 1)]


def test_what_clients_send_at_connect(server):
    cases = [
        (b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n", b"+OK\r\n"),
        (b"SELECT 1\r\n", b"-ERR DB index is out of range\r\n"),
        (b"CLIENT SETINFO LIB-NAME x\r\n", b"+OK\r\n"),
        (b"client setname me\r\n", b"+OK\r\n"),
        (b"CONFIG GET save\r\n", b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
        (b"CONFIG GET appendonly\r\n", b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"),
        (b"CONFIG GET nosuch\r\n", b"*0\r\n"),
        (b"COMMAND DOCS\r\n", b"*0\r\n"),
        (b"HELLO 3\r\n", b"-NOPROTO sorry, this protocol version is not supported\r\n"),
        (b"ping\r\n", b"+PONG\r\n"),
        (b"FOO\r\n", b"-ERR unknown command 'FOO', with args beginning with: \r\n"),
    ]
    for request, reply in cases:
        assert exchange(server, request, len(reply)) == reply, request


def test_quit_answers_ok_then_closes_and_ignores_the_rest(server):
    with server.connect() as s:
        s.sendall(b"PING\r\n*1\r\n$4\r\nQUIT\r\nPING\r\n")
        assert recv_until_eof(s) == b"+PONG\r\n+OK\r\n"


# -- (b) redis-benchmark ---------------------------------------------------------------------


def test_redis_benchmark_runs_clean(server):
    if shutil.which("redis-benchmark") is None:
        pytest.skip("redis-benchmark is not installed (make test-tools installs it)")
    done = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-P", "16", "-c", "50",
         "-t", "ping,set,get,incr", "-n", "20000", "--csv"],
        capture_output=True, timeout=120)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert "error" not in out.lower() and "warning" not in out.lower(), out
    rows = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(done.stdout.decode()))
            if row and row[0] != "test"}
    assert set(rows) == {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"}, out
    assert all(rate > 0 for rate in rows.values()), rows
    client = server.client(protocol=2)
    assert client.ping() is True  # and the server is still there
    client.close()


# -- (c) what no client library sends --------------------------------------------------------


@pytest.mark.parametrize("bad, reply", [
    (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length '-5'\r\n"),
    (b"*1\r\n$999999999999\r\n",
     b"-ERR Protocol error: bulk length of 999999999999 exceeds the limit 536870912\r\n"),
    (b"*1\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length 'x'\r\n"),
    (b"x" * 70000, b"-ERR Protocol error: inline request longer than the limit of 65536 "
                   b"bytes\r\n"),
])
def test_malformed_input_gets_a_protocol_error_and_a_close(server, bad, reply):
    other = server.client(protocol=2)
    assert other.set("survivor", "1") is True  # connected before, and stays so
    with server.connect() as s:
        s.sendall(b"PING\r\n" + bad)
        assert recv_until_eof(s) == b"+PONG\r\n" + reply
    assert other.get("survivor") == b"1" and other.ping() is True
    other.close()


# -- (d) the command line and the signals ----------------------------------------------------


def test_help_exits_zero():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True,
                          timeout=30, cwd=ROOT)
    assert done.returncode == 0
    assert b"--port" in done.stdout and b"--host" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_and_exits_zero(sig):
    with Server("--max-bulk", "1000") as s:
        client = s.client(protocol=2)
        assert client.set("k", "v" * 1000) is True
        with s.connect() as raw:
            raw.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            assert recv_exactly(raw, 1009) == b"$1000\r\n" + b"v" * 1000 + b"\r\n"
            raw.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1001\r\n")
            assert recv_until_eof(raw) == (b"-ERR Protocol error: bulk length of 1001 exceeds "
                                           b"the limit 1000\r\n")
            idle = s.connect()
        s.proc.send_signal(sig)
        assert recv_until_eof(idle) == b""  # drained: our side is closed, nothing lost
        idle.close()  # the server lingers for our FIN (reactor's graceful close), then ends
        client.close()
        assert s.proc.wait(10) == 0
