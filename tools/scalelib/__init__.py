"""The verified-connection scale client: N connections, each checked byte for byte twice.

    .venv/bin/python tools/scale.py --port 9000 --conns 100000 --pid PID
    .venv/bin/python tools/scale.py --port 9000 --conns 1000000 --hold 30 --pid PID

Modules: ``plan.py`` (how many client processes, which 127.x.y.z source addresses, the
deadline: pure), ``verify.py`` (the lines, the verdict on received bytes, the failure kinds:
pure), ``client.py`` (one client process: epoll, non-blocking connects, a pacer),
``fleet.py`` (the parent: the processes, the phases, the server's RSS from /proc, the
result), ``cli.py`` (the command line).

Why processes and source addresses. A socket is an fd, and RLIMIT_NOFILE's hard limit
(20,000 here) binds each process: so at most 15,000 connections per client process. A
connection is a 4-tuple, and towards one server address and port one source address has
only the ephemeral range's ~28,000 ports, and connect() slows as they fill: so at most 7,000
per source address (a quarter of the range), bound with
IP_BIND_ADDRESS_NO_PORT so that the kernel picks the port at connect, per destination.

What is verified. Connection g of process p sends ``scale p g connect\\n`` once connected; its
echo is what "established" means (a connection still in the server's accept queue is not).
When every process has settled round one (each connection echoed or failed), the hold
starts: all of them are open at once, and the server's RSS is sampled. Then each sends
``scale p g hold\\n``, and when that is back too it is verified and closed. ``PING\\n`` lines
from the server may come anywhere between lines, and are counted. Every other byte is a
failure of that connection, of one kind (``verify.Failure``); verified plus all failures is
always N. Exit status 0 iff every connection was verified, 1 otherwise, 2 for bad usage.
"""
