"""line-echo: the reference service. argparse -> ServerConfig -> run_server -> exit status.

This module sits above the core (it imports ``handlers``); nothing in the core
imports it. Exit status: 0 after a drain, 1 if the address cannot be bound,
2 for bad arguments (one line on stderr each).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from handlers.echo import ERR_SERVER_FULL, ERR_TOO_MANY_FROM_ADDRESS, LineEchoHandler
from handlers.line import LineCodec
from reactor.service.cli._args import OneLineParser, number, parse
from reactor.connection import ConnectionOptions
from reactor.service.server import (ServerConfig, activated_socket, bind_sockets,
                                   format_address, run_server)

PROG = "line-echo"
_LEVELS = ("debug", "info", "warning", "error", "critical")


_at_least_one = number(int, 1, what="integer")
_zero_or_more = number(int, 0, what="integer")
_per_second = number(float, 0, what="rate")
_seconds = number(float, 0, what="number of seconds")
_positive_seconds = number(float, 0, strict=True, what="number of seconds")
_grain = number(float, 0, maximum=1.0, what="number of seconds")  # later than that: a bug
_port = number(int, 0, maximum=65535, what="port")
_DEFAULTS = ConnectionOptions()
_MAX_SEND = _DEFAULTS.max_send_buffer  # 4 MiB
_MAX_BUFFER_MEMORY = 1 << 30  # 1 GiB: the pool's cap, split into fair shares
_buffer_memory = number(int, 1 << 20, what="number of bytes")
_PROXY_TIMEOUT_S = 10.0  # the PROXY header's deadline when --line-timeout is off


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _level(text: str) -> str:
    if text.lower() not in _LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(_LEVELS)}, not {text!r}")
    return text.lower()


def _tls_context(args: argparse.Namespace) -> Any:
    """The server context --tls-* ask for (None without --tls-cert); ValueError in one line
    for flags that do not go together or files that cannot be loaded."""
    if args.tls_cert is None:
        if args.tls_key or args.tls_ca or args.tls_verify_client:
            raise ValueError("--tls-key, --tls-ca and --tls-verify-client need --tls-cert")
        return None
    if args.tls_verify_client and not args.tls_ca:
        raise ValueError("--tls-verify-client needs --tls-ca (the CAs client certificates "
                         "chain to)")
    from reactor.tls import server_context  # ssl only for a TLS service

    try:
        return server_context(args.tls_cert, args.tls_key, cafile=args.tls_ca,
                              verify_client=args.tls_verify_client)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        what = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ValueError(f"cannot load the TLS certificate or key: {what}") from None


def _options(args: argparse.Namespace) -> ConnectionOptions:
    # Reading pauses at the high watermark (64 KiB by default), which must not exceed the
    # hard limit: a smaller --max-send-buffer brings the watermarks down with it.
    high = min(_DEFAULTS.high_water, args.max_send_buffer)
    return ConnectionOptions(idle_timeout_s=args.idle_timeout, heartbeat_s=args.heartbeat,
                             frame_timeout_s=args.line_timeout,
                             write_timeout_s=args.write_timeout, high_water=high,
                             low_water=high // 4, max_send_buffer=args.max_send_buffer,
                             ssl=_tls_context(args),
                             ssl_handshake_timeout_s=args.tls_handshake_timeout,
                             proxy_protocol=args.proxy_protocol,
                             # "within the line timeout"; with none set, 10 s
                             proxy_timeout_s=args.line_timeout or _PROXY_TIMEOUT_S)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Echo every newline-terminated line back, byte for byte.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=9000, help="TCP port; 0 picks one (default 9000)")
    p.add_argument("--unix", metavar="PATH", help="listen on a unix socket instead of TCP")
    p.add_argument("--workers", type=_at_least_one, default=1, metavar="N",
                   help="worker processes sharing the port (SO_REUSEPORT); default 1")
    p.add_argument("--max-conns", type=_at_least_one, metavar="N",
                   help="connection cap per worker (default: RLIMIT_NOFILE less 32)")
    p.add_argument("--max-conns-per-ip", type=_zero_or_more, default=0, metavar="N",
                   help="connections one client address may hold, per worker; "
                        "0 = off (default; never for --unix)")
    p.add_argument("--accept-rate", type=_per_second, default=0.0, metavar="N",
                   help="accept at most N connections per second, in bursts of up to N "
                        "(at least 1), per worker; 0 = off (default)")
    p.add_argument("--max-line", type=_at_least_one, default=65536, metavar="BYTES",
                   help="longest line accepted, newline included (default 65536)")
    p.add_argument("--line-timeout", type=_seconds, default=0.0, metavar="SEC",
                   help="a partial line whose first byte came SEC seconds ago gets "
                        "'ERR line timeout' and a close; 0 = off (default)")
    p.add_argument("--max-send-buffer", type=_at_least_one, default=_MAX_SEND, metavar="BYTES",
                   help="bytes queued for one peer above which it is closed as a slow "
                        f"consumer (default {_MAX_SEND}, 4 MiB)")
    p.add_argument("--max-buffer-memory", type=_buffer_memory, default=_MAX_BUFFER_MEMORY,
                   metavar="BYTES",
                   help="cap of the buffer pool per worker, shared fairly by the "
                        f"connections (default {_MAX_BUFFER_MEMORY}, 1 GiB; mapped as used)")
    p.add_argument("--write-timeout", type=_seconds, default=10.0, metavar="SEC",
                   help="a peer that is sent more than it reads and takes no byte for SEC "
                        "seconds is closed as a slow consumer; 0 = off (default 10)")
    p.add_argument("--idle-timeout", type=_seconds, default=300.0, metavar="SEC",
                   help="close a connection silent for SEC seconds; 0 = off (default 300)")
    p.add_argument("--heartbeat", type=_seconds, default=0.0, metavar="SEC",
                   help="send PING after SEC seconds with nothing sent; 0 = off (default)")
    p.add_argument("--timer-grain", type=_grain, default=0.01, metavar="SEC",
                   help="idle, heartbeat and other connection deadlines are rounded up onto "
                        "a grid SEC apart (at most 1), so one wakeup serves all those due "
                        "within it; 0 = the wheel's 1 ms tick (default 0.01)")
    p.add_argument("--drain-timeout", type=_seconds, default=10.0, metavar="SEC",
                   help="on SIGTERM/SIGINT, how long to drain before dropping (default 10)")
    stats = p.add_mutually_exclusive_group()
    stats.add_argument("--stats-socket", metavar="PATH",
                       help="serve the reactor's internals as JSON on this unix socket (mode "
                            "0600; default: the advertised one fd-stats PID finds, one per "
                            "worker)")
    stats.add_argument("--no-stats-socket", action="store_true",
                       help="serve no stats socket at all")
    p.add_argument("--tls-cert", metavar="PATH",
                   help="serve TLS with this certificate chain (PEM); plaintext clients get "
                        "no echo and are closed")
    p.add_argument("--tls-key", metavar="PATH",
                   help="its private key (PEM; default: in the --tls-cert file)")
    p.add_argument("--tls-ca", metavar="PATH",
                   help="CA certificates (PEM) that client certificates must chain to")
    p.add_argument("--tls-verify-client", action="store_true",
                   help="require a client certificate chaining to --tls-ca")
    p.add_argument("--tls-handshake-timeout", type=_positive_seconds, default=60.0,
                   metavar="SEC", help="close a TLS handshake not done in SEC seconds "
                                       "(default 60)")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="every connection must begin with a PROXY protocol v1 or v2 header "
                        "(HAProxy's send-proxy/send-proxy-v2): its address is the client's, "
                        "for logs, --max-conns-per-ip and stats; anything else, or no header "
                        "within --line-timeout (10 s if off), is closed")
    p.add_argument("--metrics", type=_host_port, metavar="HOST:PORT",
                   help="serve GET /metrics for Prometheus on HOST:PORT (with --workers, "
                        "every worker's figures, labelled worker=\"I\")")
    p.add_argument("--backlog", type=_at_least_one, default=1024, metavar="N",
                   help="listen backlog (default 1024; the kernel caps it at somaxconn)")
    p.add_argument("--log-level", type=_level, default="info", metavar="LEVEL",
                   help=f"one of {', '.join(_LEVELS)} (default info); logs go to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    address = args.unix if args.unix else (args.host, args.port)
    try:
        options = _options(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        address=address,
        workers=args.workers,
        backlog=args.backlog,
        max_conns=args.max_conns,
        reject_message=ERR_SERVER_FULL,
        max_conns_per_ip=args.max_conns_per_ip,
        per_ip_reject_message=ERR_TOO_MANY_FROM_ADDRESS,
        accept_rate=args.accept_rate,
        drain_timeout_s=args.drain_timeout,
        stats_socket=args.stats_socket,
        stats=not args.no_stats_socket,
        options=options,
        max_buffer_bytes=args.max_buffer_memory,
        timer_grain_s=args.timer_grain,
        metrics=args.metrics,
    )
    try:
        inherited = activated_socket(PROG)  # systemd's socket, if it passed one
        sockets = [inherited] if inherited is not None else bind_sockets(
            address, args.workers, args.backlog)
    except OSError as exc:
        print(f"{PROG}: cannot listen on {format_address(address, brackets=False)}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    where = format_address(sockets[0].getsockname(), brackets=False)
    # Both are stateless, so one of each serves every connection (no per-connection objects).
    handler = LineEchoHandler()
    codec = LineCodec(args.max_line)
    try:
        return run_server(config, lambda: handler, lambda: codec, sockets,
                          on_ready=lambda: print(f"listening on {where}", flush=True))
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
