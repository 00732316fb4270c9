"""Benchmark line-echo against py-et, two asyncio peers, uvloop and a C epoll echo, in one run.

    .venv/bin/python tools/bench.py                  # full run: --repeat 3, about 15 min
    .venv/bin/python tools/bench.py --smoke          # CI: 1 repeat, small sizes, < 1 min
    .venv/bin/python tools/bench.py --only firehose --servers line-echo,asyncio --json out.jsonl

(``make bench`` installs the ``bench`` extra, uvloop, then runs this.) Every server gets
the same contract (echo every ``\\n``-terminated line byte for byte, keep a partial line,
stop reading when writes back up) and the same load, and each table compares the servers
measured in that same run, as medians of the repeats and ratios to the peers: the
machines are shared and noisy, so absolute figures alone mean little. The asyncio peers
are ``tools/bench/aio_echo.py`` in two styles: ``asyncio-lines`` handles each line as a
line (the issue's "asyncio Protocol", which the targets are measured against) and
``asyncio`` writes everything up to the last newline at once (the fastest asyncio echo);
``uvloop`` is the latter on uvloop. ``py-et`` is ``../shared/bench/py_et_echo.py``, a stdlib
edge-triggered epoll echo: the ceiling for pure Python, which the flood and open-loop
targets are judged against.

Placement: the server runs pinned to one CPU, the load generator (``tools/bench/load.c``,
compiled here with the system ``cc``: one epoll process that measures its own CPU and is
reported "load-bound" when it saturates its core) pinned to another; everything goes to
127.0.0.1 only; every process is bounded in time (``--max-seconds``, SIGALRM, subprocess
timeouts, and PR_SET_PDEATHSIG so nothing outlives this script). Each measurement starts
a fresh server so peak RSS belongs to that one workload.

Every workload checks what it counts: the firehose and the closed loop verify that the
bytes that come back are whole ``ping\\n`` lines in order and that every connection was
served, the idle run checks the server holds all N connections (its fd count) and echoes
one line on each, the accept run counts the probes that got their own line back. The flood
(no window) and the open loop (fixed offered load, numbered lines) count every connect()
the generator makes (none is reopened), what each connection got, and every echo; see
``flood.py``. The TLS workloads (``tls.py``, over ``tools/bench/tlsload.c`` and OpenSSL:
the firehose inside TLS, and full handshakes per second) run on the servers that speak
TLS, line-echo, asyncio and uvloop, and check every decrypted byte and every connect(). The
exit status is 1 if the harness itself failed (a server that did not start, a generator
that crashed or timed out, a wrong byte), else 0; a server that starves or drops
connections is flagged in its row and its record says ``"verified": false``.
"""
