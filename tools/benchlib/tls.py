"""The TLS workloads: the firehose inside TLS, and full handshakes per second.

Both run ``tools/bench/tlsload.c`` (OpenSSL, compiled at run time with ``-lssl -lcrypto``;
without OpenSSL's headers they are skipped with a note) against the servers that speak
TLS (``base.TLS_SERVERS``: line-echo with ``--tls-cert/--tls-key``, and the batched
asyncio peer on asyncio and on uvloop, all with the same certificate from tests/certs and
contexts built the same way), TLS 1.3 only:

- ``tls`` — N connections, each handshaken once, then the windowed firehose of
  ``load.c``: at most ``firehose_window(N)`` plaintext bytes unechoed per connection
  (16 KiB at 1,000: about one TLS record), every decrypted byte checked. The client
  verifies the server's certificate against tests/certs/ca.pem (the handshakes are
  before the window, so that costs the measurement nothing).
- ``handshake`` — K clients, each repeatedly: connect, full handshake (no resumption:
  the generator counts any resumed session as a failure), one numbered line and its
  echo checked, RST. Handshakes/s are the cycles completed in the window; the server's
  CPU per handshake is its CPU time over the window divided by them. Unpaced (rate 0)
  the clients go as fast as they can: on two cores the generator's own OpenSSL work per
  handshake is about the server's, so that figure is the generator's ceiling as much as
  the server's ("gen busy" says which); paced (``--rate R``) every server is offered the
  same handshakes/s, and the CPU per handshake compares them at the same load. The client does not
  verify the certificate chain here (it still checks the server's CertificateVerify
  signature, as every TLS 1.3 client does): a chain check is ~80 µs of the generator's
  CPU per handshake, and the generator is what limits this workload on two cores.
"""

from __future__ import annotations

from typing import Any

from .base import (CERT_DIR, Env, HarnessError, Plan, Server, firehose_window, noise_warnings,
                   service_notes)

TLS_CONNECT_BUDGET_S = 60.0  # uvloop accepted 1,000 TLS connections in up to 16 s here
CYCLE_TIMEOUT_S = 10.0       # one handshake cycle older than this is a failure
DRAIN_S = 5.0                # after the window: cycles in flight may end


def tls_firehose_checks(out: dict[str, Any], conns: int) -> dict[str, Any]:
    """Every byte right, every connection initiated once, handshaken, kept and served."""
    notes = []
    if out["mismatches"]:
        notes.append(f"BAD BYTES x{out['mismatches']}")
    if out["initiated"] != conns:
        notes.append(f"{out['initiated']}/{conns} connections initiated")
    if out["connect_failed"]:
        notes.append(f"{out['connect_failed']}/{conns} connects failed")
    if out["handshake_failed"]:
        notes.append(f"{out['handshake_failed']}/{conns} handshakes failed "
                     f"({out.get('first_error') or '?'})")
    if out["resumed"]:
        notes.append(f"{out['resumed']}/{conns} sessions resumed")
    notes += service_notes(out, conns)
    return {"verified": not notes, "notes": notes, "warnings": noise_warnings(out),
            "bytes_ok": not out["mismatches"],
            "opened_exactly": out["initiated"] == conns and out["open"] == conns}


def handshake_failures(out: dict[str, Any]) -> int:
    """Cycles that ended without their echo, by any of the kinds tlsload.c counts."""
    return (out["connect_failed"] + out["handshake_failed"] + out["dropped"]
            + out["mismatch_conns"] + out["timeouts"])


def handshake_checks(out: dict[str, Any]) -> dict[str, Any]:
    """No failed cycle, nothing resumed, every connect() accounted for exactly once."""
    notes = []
    if out["mismatches"]:
        notes.append(f"BAD BYTES x{out['mismatches']}")
    for key, what in (("connect_failed", "connects failed"),
                      ("handshake_failed", "handshakes failed"),
                      ("dropped", "closed or reset before the echo"),
                      ("timeouts", f"cycles over {CYCLE_TIMEOUT_S:g} s"),
                      ("resumed", "sessions resumed"),
                      ("in_flight_end", "cycles unfinished after the drain")):
        if out[key]:
            notes.append(f"{out[key]}/{out['initiated']} {what}")
    if out["connect_failed"] or out["handshake_failed"] or out["dropped"]:
        notes.append(f"first: {out.get('first_error') or '?'}")
    accounted = out["completed"] + handshake_failures(out) + out["in_flight_end"]
    if accounted != out["initiated"]:  # the generator's own bookkeeping: a harness bug
        notes.append(f"accounting: {accounted} cycles ended of {out['initiated']} initiated")
    if out["cycles"] <= 0:
        notes.append("no handshake completed in the window")
    return {"verified": not notes, "notes": notes, "warnings": noise_warnings(out),
            "bytes_ok": not out["mismatches"]}


def _tls_load(env: Env, args: list[str], timeout: float) -> dict[str, Any]:
    if env.tls_bin is None:
        raise HarnessError(env.tls_skipped or "tlsload was not compiled")
    return env.run_load(args, timeout, binary=env.tls_bin)


def measure_tls_firehose(env: Env, server: Server, conns: int, plan: Plan) -> dict[str, Any]:
    window = firehose_window(conns)
    out = _tls_load(env, ["--mode", "firehose", "--port", str(server.port),
                          "--conns", str(conns), "--window", str(window),
                          "--duration", str(plan.duration), "--warmup", str(plan.warmup),
                          "--connect-timeout", str(TLS_CONNECT_BUDGET_S),
                          "--ca", str(CERT_DIR / "ca.pem"), "--server-pid", str(server.pid)],
                    timeout=TLS_CONNECT_BUDGET_S + plan.warmup + plan.duration + 30)
    cpu, lines = out.get("server_cpu_s", -1), out.get("lines", 0)
    # The generator does the mirror image of the server's record work (it encrypts what
    # the server decrypts and the other way round) in C: its busy CPU per line is what
    # OpenSSL and the kernel cost without any Python, a floor for the servers' CPU/line.
    gen_s = out["gen_busy_pct"] / 100 * out["window_s"]
    return {**out, "config": f"{conns}",
            "plain_mb_per_s": out["lines_per_s"] * 5 / 1e6,
            "server_cpu_ns_per_line": cpu * 1e9 / lines if cpu >= 0 and lines else None,
            "gen_cpu_ns_per_line": gen_s * 1e9 / lines if lines else None,
            **tls_firehose_checks(out, conns)}


def measure_handshake(env: Env, server: Server, clients: int, rate: int,
                      plan: Plan) -> dict[str, Any]:
    out = _tls_load(env, ["--mode", "handshake", "--port", str(server.port),
                          "--conns", str(clients), "--rate", str(rate),
                          "--duration", str(plan.duration),
                          "--warmup", str(plan.warmup), "--cycle-timeout", str(CYCLE_TIMEOUT_S),
                          "--drain-seconds", str(DRAIN_S), "--server-pid", str(server.pid)],
                    timeout=plan.warmup + plan.duration + DRAIN_S + 30)
    cpu, cycles, wall = out.get("server_cpu_s", -1), out["cycles"], out["window_s"]
    gen_s = out["gen_busy_pct"] / 100 * wall  # its CPU less the empty polls
    rec = {**out, "config": f"{clients}x{rate}", "clients": clients,
           "failed": handshake_failures(out),
           "server_cpu_us_per_handshake": cpu * 1e6 / cycles if cpu >= 0 and cycles else None,
           "gen_cpu_us_per_handshake": gen_s * 1e6 / cycles if cycles else None,
           **handshake_checks(out)}
    if rate and out["handshakes_per_s"] < 0.9 * rate:  # the load, not the harness: a warning
        rec["warnings"].append(f"fell behind: {out['handshakes_per_s']:.0f} of {rate}/s offered "
                               f"({out['starts_late']} starts late)")
    return rec
