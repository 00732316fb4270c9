/* tlsload.c: the TLS load generator of tools/bench.py, compiled by it at run time.
 *
 *     cc -O2 -o tlsload tlsload.c -lssl -lcrypto
 *     ./tlsload --mode firehose --port 9000 --conns 1000 --duration 3 --ca tests/certs/ca.pem
 *     ./tlsload --mode handshake --port 9000 --conns 50 --duration 3 --ca tests/certs/ca.pem
 *
 * load.c's twin over OpenSSL: one process, one thread, non-blocking sockets on
 * edge-triggered epoll, meant to be pinned to its own core; it measures its own CPU so a
 * run where it saturated its core can say so, and it is bounded in time (SIGALRM after
 * --max-seconds whatever happens). Loopback only (127.0.0.1). TLS 1.3 unless
 * --tls-version 1.2; with --ca PATH the server's certificate must chain to that CA and be
 * valid for 127.0.0.1 (a handshake that fails verification is a failed handshake).
 * Clients never resume a session: every handshake is a full one (the tickets a TLS 1.3
 * server sends are read and dropped). Every connection ends with SO_LINGER 0 (RST), so
 * no TIME_WAIT piles up over thousands of handshakes.
 *
 * Modes (one JSON object on stdout at the end):
 *   firehose   N connections, each handshaken once, then each keeps sending pipelined
 *              "ping\n" in TLS records while reading the echo, with at most --window
 *              plaintext bytes unechoed per connection (the server's backpressure is
 *              respected, as in load.c's firehose). Lines/s echoed back during the
 *              window. The decrypted stream on each connection must be exactly "ping\n"
 *              repeated from where it left off, never more than was sent. Connections
 *              are opened once (at most MAX_INPROGRESS connecting or handshaking at a
 *              time) and never reopened: "initiated" counts every connect().
 *   handshake  K client slots, each in a loop: connect, full handshake, send one
 *              numbered line ("hs %06u %08u\n": slot, cycle), read its echo, which must
 *              be exactly that line and nothing more, close with RST, start again.
 *              A cycle is "completed" when its echo is verified; handshakes/s is the
 *              completed cycles in the window over its length. A failed cycle (connect
 *              refused, handshake refused, reset or EOF before the echo, a wrong byte,
 *              or older than --cycle-timeout) is counted by kind and the slot starts
 *              again. After the window no new cycle starts and the ones in flight get
 *              up to --drain-seconds to end, so initiated = completed + failed +
 *              in_flight_end, every connect() accounted for once. With --rate R the
 *              cycles are paced instead: a free slot starts the next cycle when it falls
 *              due (R per second over all slots, evenly spaced), so every server is
 *              offered the same handshakes/s and its CPU per handshake is compared at
 *              the same load; a start more than 50 ms late (no slot free) is counted in
 *              "starts_late" and the schedule moves on from now.
 * With --server-pid the server's CPU (utime+stime from /proc/PID/stat) over the window
 * and its RSS and peak RSS (VmRSS/VmHWM) are reported too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define PAT_LEN (LINE_LEN * 3277)     /* 16,385 bytes: one TLS record's worth per write */
#define MAX_INPROGRESS 256            /* connecting or handshaking at once (firehose) */
#define HS_LINE_LEN 19                /* "hs %06u %08u\n" */

enum { CONNECTING = 0, HANDSHAKING = 1, OPEN = 2, DEAD = 3 };
enum { M_FIREHOSE, M_HANDSHAKE };

typedef struct {
    int fd;
    int state;
    SSL *ssl;
    uint64_t sent, recvd;   /* plaintext bytes, since the handshake */
    uint64_t wpend;         /* a write that returned WANT_WRITE: its length, to offer again */
    uint64_t lines_t0;      /* firehose: lines received when the window opened */
    /* handshake mode */
    uint32_t cycle;         /* this slot's cycle number */
    uint64_t t_start;       /* ns: connect() of this cycle */
    int line_sent;          /* the line went out whole */
    int got;                /* bytes of the echo received */
    char line[HS_LINE_LEN + 1];
} conn_t;

static char pat[PAT_LEN + LINE_LEN];
static char rbuf[1 << 16];
static int ep;
static int mode;
static double cycle_timeout = 10;
static double rate = 0;          /* handshake mode: cycles started per second; 0 = unpaced */
static double next_start = 0;    /* paced: when the next cycle falls due (s) */
static uint64_t n_late = 0;      /* paced: starts that found no free slot for 50 ms */
static const char *ca_path = NULL;
static int tls_version = 13;
static SSL_CTX *ctx;
static conn_t *conns;
static struct sockaddr_in server;
static int measuring = 0, cycling = 1;

/* What happened, over the whole run. */
static int inprogress = 0, next_connect = 0, n_open = 0;
static uint64_t n_initiated = 0, n_connect_failed = 0, n_hs_failed = 0, n_dropped = 0;
static uint64_t n_mismatch_conns = 0, n_timeouts = 0, n_handshakes = 0, n_completed = 0;
static uint64_t n_resumed = 0;     /* handshakes that resumed a session: must stay 0 */
static uint64_t mismatches = 0;
static uint64_t lines_window = 0, hs_window = 0, cycles_window = 0;
static char first_error[200] = "";
static char neg_version[32] = "", neg_cipher[64] = "";

/* Latency histograms (handshake mode): handshake, and the whole cycle. */
static hist_t h_hs, h_cycle;

static void note_error(const char *what) {
    if (first_error[0]) { ERR_clear_error(); return; }
    unsigned long e = ERR_get_error();
    char buf[160] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    else if (errno) snprintf(buf, sizeof buf, "%s", strerror(errno));
    snprintf(first_error, sizeof first_error, "%s: %s", what, buf[0] ? buf : "EOF");
    for (char *p = first_error; *p; p++) if (*p == '"' || *p == '\\') *p = '\'';
    ERR_clear_error();
}

/* Close a connection with RST (SO_LINGER 0), without a close_notify. */
static void close_conn(conn_t *c) {
    if (c->state == DEAD) return;
    if (c->state == CONNECTING || c->state == HANDSHAKING) inprogress--;
    if (c->state == OPEN) n_open--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close_rst(c->fd);
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
    c->state = DEAD;
}

static void start_connect(conn_t *c);

/* A connection is over, for good (firehose) or until its slot's next cycle (handshake). */
static void end_conn(conn_t *c) {
    close_conn(c);
    if (mode == M_HANDSHAKE && cycling && rate <= 0) start_connect(c);
}

/* Paced handshake mode: start the cycles that have fallen due, each on a free slot. */
static int pace_slot = 0;
static void pace(void) {
    if (rate <= 0 || !cycling) return;
    double t = now_s();
    while (next_start <= t) {
        int i, found = -1;
        for (i = 0; i < nconns; i++) {
            int k = (pace_slot + i) % nconns;
            if (conns[k].state == DEAD) { found = k; break; }
        }
        if (found < 0) {  /* every slot busy: late; after 50 ms, move the schedule on */
            if (t - next_start > 0.05) { n_late++; next_start = t; }
            return;
        }
        pace_slot = (found + 1) % nconns;
        start_connect(&conns[found]);
        next_start += 1.0 / rate;
    }
}

static void start_connect(conn_t *c) {
    c->sent = c->recvd = c->wpend = 0;
    c->line_sent = c->got = 0;
    c->cycle++;
    c->t_start = now_ns();
    n_initiated++;
    c->fd = tcp_socket();
    if (c->fd < 0) { n_connect_failed++; note_error("socket"); c->state = DEAD; return; }
    c->state = CONNECTING;
    inprogress++;
    if (watch_and_connect(ep, c->fd, c, &server) < 0) {
        n_connect_failed++;
        note_error("connect");
        close_conn(c);  /* handshake mode: the slot starts again at the next scan or pace */
    }
}

static void fail(conn_t *c, uint64_t *counter, const char *what) {
    (*counter)++;
    note_error(what);
    end_conn(c);
}

/* The plaintext that came back. */
static void on_data(conn_t *c, const char *data, size_t n) {
    if (mode == M_FIREHOSE) {
        uint64_t done = check_echo(pat, data, n, &c->recvd, c->sent, &mismatches);
        if (measuring) lines_window += done;
        return;
    }
    /* The echo must be exactly this cycle's line: a wrong byte, or one more, fails it. */
    if (n > (size_t)(HS_LINE_LEN - c->got) || memcmp(data, c->line + c->got, n) != 0) {
        mismatches++;
        c->got = -1;
        return;
    }
    c->got += (int)n;
}

/* Write what the mode wants: the cycle's line (handshake), or pipelined "ping\n" up to
 * the window (firehose). 0, or -1 if the connection died. */
static int pump_writes(conn_t *c) {
    if (mode == M_HANDSHAKE) {
        if (c->line_sent) return 0;
        ERR_clear_error();
        int w = SSL_write(c->ssl, c->line + c->sent, HS_LINE_LEN - (int)c->sent);
        if (w > 0) { c->sent += (uint64_t)w; if (c->sent >= HS_LINE_LEN) c->line_sent = 1; return 0; }
        int e = SSL_get_error(c->ssl, w);
        return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? 0 : -1;
    }
    for (;;) {
        uint64_t inflight = c->sent - c->recvd;
        if (inflight >= window_bytes) return 0;
        uint64_t n = window_bytes - inflight;
        if (n > PAT_LEN) n = PAT_LEN;
        /* After WANT_WRITE OpenSSL wants at least the same length again: the window
         * only widens meanwhile (sent is unchanged, recvd may grow), so it always is. */
        if (n < c->wpend) n = c->wpend;
        ERR_clear_error();
        int w = SSL_write(c->ssl, pat + c->sent % LINE_LEN, (int)n);
        if (w > 0) { c->sent += (uint64_t)w; c->wpend = 0; continue; }
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) { c->wpend = n; return 0; }
        return -1;
    }
}

static void cycle_done(conn_t *c) {
    uint64_t t = now_ns();
    n_completed++;
    if (measuring) { cycles_window++; hadd(&h_cycle, t - c->t_start); }
    end_conn(c);
}

/* Read until OpenSSL needs the socket again. 0, or -1 if the connection ended here. */
static int pump_reads(conn_t *c) {
    for (;;) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, rbuf, sizeof rbuf);
        if (r > 0) {
            on_data(c, rbuf, (size_t)r);
            if (mode == M_HANDSHAKE) {
                if (c->got < 0) { n_mismatch_conns++; end_conn(c); return -1; }
                if (c->got == HS_LINE_LEN) { cycle_done(c); return -1; }
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        fail(c, &n_dropped, e == SSL_ERROR_ZERO_RETURN ? "closed by the server"
                                                       : "reset or EOF from the server");
        return -1;
    }
}

static void handshake_step(conn_t *c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        fail(c, &n_hs_failed, "handshake");
        return;
    }
    c->state = OPEN;
    inprogress--;
    n_open++;
    n_handshakes++;
    if (SSL_session_reused(c->ssl)) n_resumed++;
    if (!neg_version[0]) {
        snprintf(neg_version, sizeof neg_version, "%s", SSL_get_version(c->ssl));
        snprintf(neg_cipher, sizeof neg_cipher, "%s", SSL_get_cipher_name(c->ssl));
    }
    if (mode == M_HANDSHAKE) {
        if (measuring) { hs_window++; hadd(&h_hs, now_ns() - c->t_start); }
        snprintf(c->line, sizeof c->line, "hs %06u %08u\n", (unsigned)(c - conns) % 1000000u,
                 c->cycle % 100000000u);
    }
    /* Edge-triggered: what came with the last handshake flight raises no new edge. */
    if (pump_writes(c) < 0) { fail(c, &n_dropped, "write"); return; }
    pump_reads(c);
}

static void on_event(conn_t *c, uint32_t e) {
    if (c->state == DEAD) return;
    if (c->state == CONNECTING) {
        if (!(e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = connect_error(c->fd);
        if (err || (e & EPOLLERR)) { errno = err; fail(c, &n_connect_failed, "connect"); return; }
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        if (ca_path) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), "127.0.0.1");
        c->state = HANDSHAKING;
        handshake_step(c);
        return;
    }
    if (c->state == HANDSHAKING) { handshake_step(c); return; }
    if (pump_reads(c) < 0) return;
    if (pump_writes(c) < 0) fail(c, &n_dropped, "write");
}

static struct epoll_event evs[4096];
static double idle_polls_s = 0;

/* Spin (poll without sleeping) while measuring, as load.c does, so the server's sends
 * never pay for waking this process; a loop turn that found nothing to do (no event, no
 * cycle started) is then subtracted from its busy time, the poll and the loop around it. */
static int spinning(void) {
    int connecting = mode == M_FIREHOSE && (next_connect < nconns || inprogress > 0);
    return spin && measuring && !connecting;
}

static uint64_t last_scan = 0;
static void run_once(int timeout_ms) {
    uint64_t turn0 = spinning() ? now_ns() : 0, started0 = n_initiated;
    if (mode == M_FIREHOSE)
        while (next_connect < nconns && inprogress < MAX_INPROGRESS) start_connect(&conns[next_connect++]);
    if (rate > 0) {
        pace();
        if (timeout_ms > 1) timeout_ms = 1;  /* cycles fall due every 1/rate s */
    }
    int n = epoll_wait(ep, evs, 4096, turn0 ? 0 : timeout_ms);
    if (turn0 && n == 0 && n_initiated == started0) {
        idle_polls_s += (double)(now_ns() - turn0) / 1e9;
        return;
    }
    for (int i = 0; i < n; i++) on_event((conn_t *)evs[i].data.ptr, evs[i].events);
    if (mode == M_HANDSHAKE) {
        uint64_t t = now_ns();
        if (t - last_scan < 10000000ull) return;  /* every 10 ms: timeouts, dead slots */
        last_scan = t;
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            if (c->state != DEAD && t - c->t_start > (uint64_t)(cycle_timeout * 1e9)) {
                n_timeouts++;
                end_conn(c);
            } else if (c->state == DEAD && cycling && rate <= 0) {
                start_connect(c);  /* its socket() or connect() failed at once */
            }
        }
    }
}

static void finish(void) {
    for (int i = 0; i < nconns; i++) close_conn(&conns[i]);
}

/* The options of tlsload.c's own (common.h has those both generators take). */
static int own_option(const char *a, const char *v) {
    if (!strcmp(a, "--cycle-timeout")) cycle_timeout = atof(v);
    else if (!strcmp(a, "--rate")) rate = atof(v);
    else if (!strcmp(a, "--ca")) ca_path = v;
    else if (!strcmp(a, "--tls-version")) tls_version = !strcmp(v, "1.2") ? 12 : !strcmp(v, "1.3") ? 13 : 0;
    else return 0;
    return 1;
}

int main(int argc, char **argv) {
    const char *mode_s = "firehose";
    if (parse_args("tlsload", argc, argv, &mode_s, own_option)) return 2;
    if (!strcmp(mode_s, "firehose")) mode = M_FIREHOSE;
    else if (!strcmp(mode_s, "handshake")) mode = M_HANDSHAKE;
    else { fprintf(stderr, "tlsload: unknown mode %s\n", mode_s); return 2; }
    if (nconns < 1 || !tls_version || cycle_timeout <= 0 || rate < 0) { fprintf(stderr, "tlsload: bad arguments\n"); return 2; }
    if (window_bytes < LINE_LEN) window_bytes = LINE_LEN;
    if (max_seconds <= 0) max_seconds = connect_timeout + warmup + duration + drain_seconds + 60;
    process_setup(max_seconds);
    fill_pattern(pat, sizeof pat);

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { fprintf(stderr, "tlsload: SSL_CTX_new failed\n"); return 1; }
    int v = tls_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ctx, v);
    SSL_CTX_set_max_proto_version(ctx, v);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);  /* no resumption: full handshakes */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);  /* one recv for many records, not two per record */
    if (ca_path) {
        if (SSL_CTX_load_verify_locations(ctx, ca_path, NULL) != 1) {
            fprintf(stderr, "tlsload: cannot load CA %s\n", ca_path);
            return 2;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }

    server = loopback(port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconns + 1, sizeof *conns);
    for (int i = 0; i < nconns; i++) conns[i].state = DEAD;

    double t_connect = now_s();
    if (mode == M_FIREHOSE) {
        double deadline = t_connect + connect_timeout;
        while ((next_connect < nconns || inprogress > 0) && now_s() < deadline) run_once(10);
        for (int i = 0; i < nconns; i++)
            if (conns[i].state == CONNECTING || conns[i].state == HANDSHAKING) {
                if (conns[i].state == CONNECTING) n_connect_failed++; else n_hs_failed++;
                close_conn(&conns[i]);
            }
    } else if (rate > 0) {
        next_start = now_s();
        pace();
    } else {
        for (int i = 0; i < nconns; i++) start_connect(&conns[i]);
    }
    double connect_s = now_s() - t_connect;
    run_until(now_s() + warmup, run_once);

    /* The measured window. */
    window_t w;
    window_open(&w);
    for (int i = 0; i < nconns; i++) conns[i].lines_t0 = conns[i].recvd / LINE_LEN;
    measuring = 1;
    run_until(w.t0 + duration, run_once);
    window_close(&w);
    measuring = 0;
    double wall = w.t1 - w.t0;

    /* Firehose: lines per connection in the window; open ones that never got a line. */
    uint64_t *per = calloc((size_t)nconns + 1, sizeof *per);
    int nper = 0, silent = 0, starved = 0;
    uint64_t bytes_back = 0;
    if (mode == M_FIREHOSE) {
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            bytes_back += c->recvd;
            if (c->state != OPEN) continue;
            uint64_t l = c->recvd / LINE_LEN - c->lines_t0;
            per[nper++] = l;
            if (!l) silent++;
            if (c->recvd < LINE_LEN) starved++;
        }
        qsort(per, (size_t)nper, sizeof *per, cmp_u64);
    }

    /* Handshake: no new cycle; the ones in flight may end. */
    int in_flight = 0;
    if (mode == M_HANDSHAKE) {
        cycling = 0;
        double deadline = now_s() + drain_seconds;
        for (;;) {
            in_flight = 0;
            for (int i = 0; i < nconns; i++) if (conns[i].state != DEAD) in_flight++;
            if (!in_flight || now_s() >= deadline) break;
            run_once(10);
        }
    }

    printf("{\"mode\": \"%s\", \"conns\": %d, \"requested\": %d, \"initiated\": %llu, "
           "\"connect_s\": %.3f, \"window_s\": %.4f, \"t0_mono\": %.6f, \"t1_mono\": %.6f, "
           "\"tls_version\": \"%s\", \"cipher\": \"%s\", \"verify_server\": %s, "
           "\"connect_failed\": %llu, \"handshake_failed\": %llu, \"dropped\": %llu, "
           "\"mismatches\": %llu, \"handshakes\": %llu, \"resumed\": %llu, \"first_error\": \"%s\", "
           "\"gen_cpu_pct\": %.1f, \"gen_busy_pct\": %.1f, \"server_cpu_pct\": %.1f, "
           "\"server_cpu_s\": %.3f, \"server_rss_kb\": %ld, \"server_hwm_kb\": %ld",
           mode_s, nconns, nconns, (unsigned long long)n_initiated, connect_s, wall, w.t0, w.t1,
           neg_version, neg_cipher, ca_path ? "true" : "false",
           (unsigned long long)n_connect_failed, (unsigned long long)n_hs_failed,
           (unsigned long long)n_dropped, (unsigned long long)mismatches,
           (unsigned long long)n_handshakes, (unsigned long long)n_resumed, first_error,
           gen_cpu_pct(&w), gen_busy_pct(&w, idle_polls_s), server_cpu_pct(&w), server_cpu_s(&w),
           status_kb(server_pid, "VmRSS"), status_kb(server_pid, "VmHWM"));
    if (mode == M_FIREHOSE)
        printf(", \"window_bytes\": %llu, \"open\": %d, \"starved\": %d, \"bytes_verified\": %llu, "
               "\"lines\": %llu, \"lines_per_s\": %.1f, \"silent_in_window\": %d, "
               "\"conn_lines_min\": %llu, \"conn_lines_med\": %llu, \"conn_lines_max\": %llu",
               (unsigned long long)window_bytes, n_open, starved, (unsigned long long)bytes_back,
               (unsigned long long)lines_window, wall > 0 ? (double)lines_window / wall : 0.0,
               silent, (unsigned long long)(nper ? per[0] : 0),
               (unsigned long long)(nper ? per[nper / 2] : 0),
               (unsigned long long)(nper ? per[nper - 1] : 0));
    else
        printf(", \"rate\": %.1f, \"starts_late\": %llu, "
               "\"completed\": %llu, \"mismatch_conns\": %llu, \"timeouts\": %llu, "
               "\"in_flight_end\": %d, \"handshakes_in_window\": %llu, \"cycles\": %llu, "
               "\"handshakes_per_s\": %.1f, \"hs_p50_us\": %.1f, \"hs_p99_us\": %.1f, "
               "\"hs_p999_us\": %.1f, \"cycle_p50_us\": %.1f, \"cycle_p99_us\": %.1f, "
               "\"cycle_p999_us\": %.1f, \"cycle_max_us\": %.1f",
               rate, (unsigned long long)n_late,
               (unsigned long long)n_completed, (unsigned long long)n_mismatch_conns,
               (unsigned long long)n_timeouts, in_flight, (unsigned long long)hs_window,
               (unsigned long long)cycles_window, wall > 0 ? (double)cycles_window / wall : 0.0,
               hpct_us(&h_hs, 0.50), hpct_us(&h_hs, 0.99), hpct_us(&h_hs, 0.999),
               hpct_us(&h_cycle, 0.50), hpct_us(&h_cycle, 0.99), hpct_us(&h_cycle, 0.999),
               (double)h_cycle.max / 1000.0);
    free(per);
    print_core_load(&w);
    printf("}\n");
    fflush(stdout);
    finish();
    SSL_CTX_free(ctx);
    return 0;
}
