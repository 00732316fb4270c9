/* load.c: the load generator of tools/bench.py, compiled by it at run time.
 *
 *     cc -O2 -o load load.c && ./load --mode firehose --port 9000 --conns 1000 --duration 3
 *
 * One process, one thread, non-blocking sockets on edge-triggered epoll, meant to be
 * pinned to its own core so that it is never the bottleneck; it measures its own CPU
 * (getrusage over the measured window) so that a run where it saturated its core can
 * say so. Every byte that comes back is checked, so a server that drops, truncates or
 * reorders cannot look fast. Loopback only (127.0.0.1); bounded in time: SIGALRM ends
 * it after --max-seconds whatever happens.
 *
 * Modes (one JSON object on stdout at the end, or per phase for idle):
 *   firehose  N connections each keep sending pipelined "ping\n" while reading the
 *             echo, with at most --window unechoed bytes per connection (the server's
 *             backpressure is respected, not flooded); lines/s echoed back.
 *   closed    N connections each keep exactly --depth lines in flight; lines/s and the
 *             per-line latency (queued to echoed, matched in order) p50/p99/p99.9.
 *   idle      open N connections that send nothing, print {"phase":"connected",...},
 *             then on the stdin line "echo" send one line on each and read it back,
 *             print {"phase":"echoed",...}; exit on "quit" or end of input.
 *   accept    firehose on N connections and, meanwhile, open --extra more at a steady
 *             rate over --open-seconds, each sending one numbered line and expecting
 *             its echo within --serve-window seconds of the first open.
 *   flood     N connections each write "ping\n" as fast as the kernel takes bytes and
 *             read whatever comes back: no window, so nothing here limits what the
 *             server must buffer, pause or refuse. Besides lines/s: lines per connection
 *             in the window (min/median/max, and how many got none), the longest gap
 *             between two arrivals on any one connection and over all of them.
 *   open      open loop, a fixed offered load: N connections each send one numbered
 *             line ("%06d %08u\n": connection, sequence) every --period-ms, spread
 *             evenly over the period, whatever the echoes do; every echo must be the
 *             next expected line of its connection. After the window the schedule
 *             stops and the generator waits (--drain-seconds) for the outstanding
 *             echoes: any still missing are "unanswered". Latency is from the line's
 *             scheduled time (not its send), so a stalled server cannot hide it.
 * Every mode counts each connect() it makes ("initiated"); a connection the server
 * closes or resets is counted as dropped and never reopened. --connect-rate R paces
 * the connects at R per second at most (0: as fast as MAX_INPROGRESS allows).
 * With --server-pid the server's CPU (utime+stime from /proc/PID/stat) over the window
 * and its RSS and peak RSS (VmRSS/VmHWM) are reported too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define PAT_LEN (LINE_LEN * 26216)   /* ~128 KiB of "ping\n" */
#define MAX_DEPTH 64
#define MAX_INPROGRESS 256            /* connects in flight: stays under any listen backlog */
#define PROBE_LEN 10                  /* "acc%06d\n" */
#define OLINE_LEN 16                  /* open loop: "%06d %08u\n" */

enum { CONNECTING = 0, OPEN = 1, DEAD = 2 };
enum { M_FIREHOSE, M_CLOSED, M_IDLE, M_ACCEPT, M_FLOOD, M_OPEN };

typedef struct {
    int fd;
    int state;
    int probe;            /* accept mode: index of a probe connection, else -1 */
    uint64_t sent, recvd; /* bytes, since connect */
    uint64_t owed;        /* closed loop: bytes queued but not yet written */
    uint64_t ts[MAX_DEPTH];
    int ts_head, ts_count;
    double t_open;        /* probes: when connect() was called */
    char pbuf[PROBE_LEN];
    int served;
    uint64_t lines_t0;    /* lines received when the window opened */
    uint64_t last_rx;     /* flood: ns of the last arrival (window start before one) */
    uint64_t gap_max;     /* flood: longest ns between arrivals within the window */
    /* open loop: lines made due, fully written, echoed; bytes of the current line
     * written; the echo being assembled */
    uint32_t seq_due, seq_tx, seq_rx;
    int send_off, rx_len;
    char rx_line[OLINE_LEN];
} conn_t;

static char pat[PAT_LEN + LINE_LEN];
static char rbuf[1 << 16];
static int ep;
static int mode;
static int depth = 1, extra = 0;
static double open_seconds = 5, serve_window = 10;
static conn_t *conns;     /* nconns main connections, then extra probes */
static int inprogress = 0, next_connect = 0, n_open = 0, n_failed = 0, n_dropped = 0;
static int probes_served = 0, probes_lost = 0;  /* lost: failed to connect or dropped unserved */
static uint64_t mismatches = 0;
static int measuring = 0;
static uint64_t lines_window = 0;
static hist_t lat_hist;         /* closed and open loop: per-line latency, in the window */
static struct sockaddr_in server;
static double connect_rate = 0;  /* connects per second at most; 0 = unpaced */
static double t_connect0 = 0;    /* when connecting started */
static int n_initiated = 0;      /* connect() calls made, probes included */
static double period_ms = 500;
static int sched_on = 0;         /* open loop: lines are being made due */
static uint64_t sched_j = 0;     /* open loop: lines made due so far, over all connections */
static double sched_t0 = 0, sched_dt = 0;
static uint64_t due_window = 0, lat_skipped = 0;
static uint64_t last_rx_any = 0, gap_any_max = 0;  /* arrivals on any connection */

static void kill_conn(conn_t *c, int dropped) {
    if (c->state == DEAD) return;
    if (c->state == CONNECTING) inprogress--;
    if (c->state == OPEN && c->probe < 0) n_open--;
    if (c->probe >= 0) { if (!c->served) probes_lost++; }
    else if (dropped) n_dropped++;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close_rst(c->fd);
    c->state = DEAD;
}

static void start_connect(conn_t *c) {
    c->fd = tcp_socket();
    if (c->fd < 0) { c->state = DEAD; if (c->probe >= 0) probes_lost++; else n_failed++; return; }
    c->state = CONNECTING;
    c->t_open = now_s();
    inprogress++;
    n_initiated++;
    if (watch_and_connect(ep, c->fd, c, &server) < 0) {
        kill_conn(c, 0);
        if (c->probe < 0) n_failed++;
    }
    /* Completion (or failure) arrives as EPOLLOUT either way. */
}

/* Write what the mode wants on an open connection. -1: the connection died. */
static int pump_open(conn_t *c);
static int pump_writes(conn_t *c) {
    if (c->probe >= 0) return 0;
    if (mode == M_OPEN) return pump_open(c);
    for (;;) {
        uint64_t n;
        if (mode == M_FLOOD) {
            n = PAT_LEN;  /* no window: as much as the kernel takes */
        } else if (mode == M_FIREHOSE || mode == M_ACCEPT) {
            uint64_t inflight = c->sent - c->recvd;
            if (inflight >= window_bytes) return 0;
            n = window_bytes - inflight;
        } else {
            n = c->owed;
            if (!n) return 0;
        }
        if (n > PAT_LEN) n = PAT_LEN;
        ssize_t w = send(c->fd, pat + c->sent % LINE_LEN, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->sent += (uint64_t)w;
        if (mode == M_CLOSED || mode == M_IDLE) c->owed -= (uint64_t)w;
    }
}

static void open_line(const conn_t *c, uint32_t seq, char *out) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%06d %08u\n", (int)(c - conns) % 1000000, seq % 100000000u);
    memcpy(out, tmp, OLINE_LEN);
}

/* Open loop: write the lines made due and not yet written, one at a time. */
static int pump_open(conn_t *c) {
    char line[OLINE_LEN];
    while (c->seq_tx < c->seq_due) {
        open_line(c, c->seq_tx, line);
        ssize_t w = send(c->fd, line + c->send_off, (size_t)(OLINE_LEN - c->send_off), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->sent += (uint64_t)w;
        c->send_off += (int)w;
        if (c->send_off < OLINE_LEN) return 0;
        c->send_off = 0;
        c->seq_tx++;
    }
    return 0;
}

/* Open loop: make due every line whose time has come, each on its connection. */
static void open_tick(void) {
    if (!sched_on || nconns <= 0) return;
    uint64_t t = now_ns();
    for (;;) {
        double due = sched_t0 + sched_dt * (double)sched_j;
        uint64_t due_ns = (uint64_t)(due * 1e9);
        if (due_ns > t) return;
        conn_t *c = &conns[sched_j % (uint64_t)nconns];
        sched_j++;
        if (c->state != OPEN) continue;
        c->ts[c->seq_due % MAX_DEPTH] = due_ns;
        c->seq_due++;
        if (measuring) due_window++;
        if (pump_writes(c) < 0) kill_conn(c, 1);
    }
}

static void on_data_open(conn_t *c, const char *data, size_t n) {
    char want[OLINE_LEN];
    uint64_t t = 0;
    while (n) {
        size_t take = (size_t)(OLINE_LEN - c->rx_len);
        if (take > n) take = n;
        memcpy(c->rx_line + c->rx_len, data, take);
        c->rx_len += (int)take;
        data += take;
        n -= take;
        c->recvd += take;
        if (c->rx_len < OLINE_LEN) break;
        c->rx_len = 0;
        open_line(c, c->seq_rx, want);
        if (c->seq_rx >= c->seq_tx || memcmp(want, c->rx_line, OLINE_LEN) != 0) { mismatches++; continue; }
        if (measuring) {
            lines_window++;
            if (c->seq_due - c->seq_rx <= MAX_DEPTH) {
                if (!t) t = now_ns();
                uint64_t due = c->ts[c->seq_rx % MAX_DEPTH];
                hadd(&lat_hist, t > due ? t - due : 0);
            } else {
                lat_skipped++;  /* more than MAX_DEPTH outstanding: its due time is gone */
            }
        }
        c->seq_rx++;
    }
}

static void on_open(conn_t *c) {
    c->state = OPEN;
    inprogress--;
    if (c->probe >= 0) {
        char line[16];
        snprintf(line, sizeof line, "acc%06d\n", c->probe);
        if (send(c->fd, line, PROBE_LEN, MSG_NOSIGNAL) != PROBE_LEN) kill_conn(c, 1);
        return;
    }
    n_open++;
    if (mode == M_CLOSED) {
        uint64_t t = now_ns();
        for (int i = 0; i < depth; i++) c->ts[i] = t;
        c->ts_head = 0;
        c->ts_count = depth;
        c->owed = (uint64_t)depth * LINE_LEN;
    }
    if (mode != M_IDLE && pump_writes(c) < 0) kill_conn(c, 1);
}

static void on_data(conn_t *c, const char *data, size_t n) {
    if (measuring) {  /* the stall detectors: gaps between arrivals */
        uint64_t t = now_ns();
        if (t - last_rx_any > gap_any_max) gap_any_max = t - last_rx_any;
        last_rx_any = t;
        if (mode == M_FLOOD) {
            if (t - c->last_rx > c->gap_max) c->gap_max = t - c->last_rx;
            c->last_rx = t;
        }
    }
    if (mode == M_OPEN) { on_data_open(c, data, n); return; }
    if (c->probe >= 0) {
        char want[16];
        snprintf(want, sizeof want, "acc%06d\n", c->probe);
        for (size_t i = 0; i < n; i++) {
            if (c->recvd >= PROBE_LEN || data[i] != want[c->recvd]) { mismatches++; c->recvd++; continue; }
            c->recvd++;
        }
        if (c->recvd == PROBE_LEN && !c->served) { c->served = 1; probes_served++; }
        return;
    }
    uint64_t done = check_echo(pat, data, n, &c->recvd, c->sent, &mismatches);
    if (measuring) lines_window += done;
    if (mode == M_CLOSED && done) {
        uint64_t t = now_ns();
        for (uint64_t k = 0; k < done; k++) {
            if (c->ts_count <= 0) { mismatches++; break; }
            uint64_t lat = t - c->ts[c->ts_head];
            c->ts_head = (c->ts_head + 1) % MAX_DEPTH;
            c->ts_count--;
            if (measuring) hadd(&lat_hist, lat);
            int slot = (c->ts_head + c->ts_count) % MAX_DEPTH;
            c->ts[slot] = t;
            c->ts_count++;
        }
        c->owed += done * LINE_LEN;
    }
}

static void on_event(conn_t *c, uint32_t e) {
    if (c->state == DEAD) return;
    if (c->state == CONNECTING) {
        if (!(e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (connect_error(c->fd) || (e & EPOLLERR)) { kill_conn(c, 0); if (c->probe < 0) n_failed++; return; }
        on_open(c);
        if (c->state != OPEN) return;
    }
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
            if (r > 0) {
                on_data(c, rbuf, (size_t)r);
                /* A short read emptied the socket; data or a FIN arriving later is a new
                 * edge, so the EAGAIN read that would confirm it is a syscall saved. */
                if ((size_t)r < sizeof rbuf) break;
                continue;
            }
            if (r == 0) { kill_conn(c, 1); return; }
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            kill_conn(c, 1);
            return;
        }
    }
    if (pump_writes(c) < 0) kill_conn(c, 1);
}

/* One pass of the event loop: start connects up to the cap, wait, dispatch. */
static struct epoll_event evs[4096];
static double idle_polls_s = 0; /* time in polls that found nothing, while measuring */

/* Wait for events. Spinning keeps this core awake, so the server's sends never pay for
 * waking a sleeping generator (a cross-CPU wake-up costs microseconds on a VM, enough to
 * make a closed loop settle in a slow or a fast mode at random); the time spent in
 * empty polls is then what tells how busy the generator really was. */
static int wait_events(int timeout_ms) {
    if (!spin || next_connect < nconns || inprogress > 0) return epoll_wait(ep, evs, 4096, timeout_ms);
    uint64_t t0 = measuring ? now_ns() : 0;
    int n = epoll_wait(ep, evs, 4096, 0);
    if (measuring && n == 0) idle_polls_s += (double)(now_ns() - t0) / 1e9;
    return n;
}

static int may_connect(void) {
    if (next_connect >= nconns || inprogress >= MAX_INPROGRESS) return 0;
    return connect_rate <= 0 || (double)next_connect < (now_s() - t_connect0) * connect_rate + 1;
}

static void run_once(int timeout_ms) {
    while (may_connect()) start_connect(&conns[next_connect++]);
    if (sched_on) {
        open_tick();
        if (timeout_ms > 1) timeout_ms = 1;  /* lines fall due every sched_dt */
    }
    int n = wait_events(timeout_ms);
    for (int i = 0; i < n; i++) on_event((conn_t *)evs[i].data.ptr, evs[i].events);
}

static void connect_all(void) {
    t_connect0 = now_s();
    double deadline = t_connect0 + connect_timeout;
    while ((next_connect < nconns || inprogress > 0) && now_s() < deadline) run_once(connect_rate > 0 ? 1 : 10);
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == CONNECTING) { kill_conn(&conns[i], 0); n_failed++; }
}

static void finish(void) {
    for (int i = 0; i < nconns + extra; i++)
        if (conns[i].state != DEAD) close_rst(conns[i].fd);
}

static int starved_main(void) {  /* open main connections that never got a whole line back */
    int s = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == OPEN && conns[i].recvd < LINE_LEN) s++;
    return s;
}

static void idle_mode(void) {
    connect_all();
    printf("{\"phase\": \"connected\", \"conns\": %d, \"open\": %d, \"connect_failed\": %d}\n",
           nconns, n_open, n_failed);
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin)) {
        if (!strncmp(cmd, "echo", 4)) {
            int dropped0 = n_dropped;
            for (int i = 0; i < nconns; i++)
                if (conns[i].state == OPEN) {
                    conns[i].owed += LINE_LEN;
                    if (pump_writes(&conns[i]) < 0) kill_conn(&conns[i], 1);
                }
            double deadline = now_s() + connect_timeout;
            int ok = 0;
            while (now_s() < deadline) {
                ok = 0;
                for (int i = 0; i < nconns; i++)
                    if (conns[i].state == OPEN && conns[i].recvd >= conns[i].sent && !conns[i].owed) ok++;
                if (ok >= n_open) break;
                run_once(20);
            }
            printf("{\"phase\": \"echoed\", \"open\": %d, \"echoed\": %d, \"mismatches\": %llu, "
                   "\"dropped\": %d}\n", n_open, ok, (unsigned long long)mismatches, n_dropped - dropped0);
            fflush(stdout);
        } else if (!strncmp(cmd, "quit", 4)) {
            break;
        }
    }
    finish();
}

/* The options of load.c's own (common.h has those both generators take). */
static int own_option(const char *a, const char *v) {
    if (!strcmp(a, "--depth")) depth = atoi(v);
    else if (!strcmp(a, "--extra")) extra = atoi(v);
    else if (!strcmp(a, "--open-seconds")) open_seconds = atof(v);
    else if (!strcmp(a, "--serve-window")) serve_window = atof(v);
    else if (!strcmp(a, "--connect-rate")) connect_rate = atof(v);
    else if (!strcmp(a, "--period-ms")) period_ms = atof(v);
    else return 0;
    return 1;
}

int main(int argc, char **argv) {
    const char *mode_s = "firehose";
    if (parse_args("load", argc, argv, &mode_s, own_option)) return 2;
    if (!strcmp(mode_s, "firehose")) mode = M_FIREHOSE;
    else if (!strcmp(mode_s, "closed")) mode = M_CLOSED;
    else if (!strcmp(mode_s, "idle")) mode = M_IDLE;
    else if (!strcmp(mode_s, "accept")) mode = M_ACCEPT;
    else if (!strcmp(mode_s, "flood")) mode = M_FLOOD;
    else if (!strcmp(mode_s, "open")) mode = M_OPEN;
    else { fprintf(stderr, "load: unknown mode %s\n", mode_s); return 2; }
    if (depth < 1 || depth > MAX_DEPTH || nconns < 0 || extra < 0) { fprintf(stderr, "load: bad sizes\n"); return 2; }
    if (mode != M_ACCEPT) extra = 0;
    if (window_bytes < LINE_LEN) window_bytes = LINE_LEN;
    if (period_ms <= 0) { fprintf(stderr, "load: bad --period-ms\n"); return 2; }
    if (max_seconds <= 0) max_seconds = connect_timeout + warmup + duration + serve_window + drain_seconds + 60;
    process_setup(max_seconds);
    fill_pattern(pat, sizeof pat);
    server = loopback(port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)(nconns + extra + 1), sizeof *conns);
    for (int i = 0; i < nconns + extra; i++) { conns[i].probe = i < nconns ? -1 : i - nconns; conns[i].state = DEAD; }

    if (mode == M_IDLE) { idle_mode(); return 0; }

    double t_connect = now_s();
    connect_all();
    double connect_s = now_s() - t_connect;
    if (mode == M_OPEN) {
        sched_on = 1;
        sched_t0 = now_s();
        sched_dt = period_ms / 1000.0 / (nconns > 0 ? nconns : 1);
    }
    run_until(now_s() + warmup, run_once);

    /* The measured window. */
    window_t w;
    window_open(&w);
    double t0 = w.t0;
    uint64_t t0_ns = (uint64_t)(t0 * 1e9);
    last_rx_any = t0_ns;
    for (int i = 0; i < nconns; i++) {
        conns[i].lines_t0 = mode == M_OPEN ? conns[i].seq_rx : conns[i].recvd / LINE_LEN;
        conns[i].last_rx = t0_ns;
    }
    measuring = 1;
    int probes_opened = 0;
    double probe_last_served = 0;
    if (mode == M_ACCEPT) {
        /* Probes open at a steady rate; the window ends when every probe is settled
         * (served, failed or dropped) or serve_window seconds after the first open. */
        double t_end = t0 + serve_window;
        for (;;) {
            double t = now_s();
            while (probes_opened < extra && t >= t0 + open_seconds * probes_opened / extra) {
                start_connect(&conns[nconns + probes_opened]);
                probes_opened++;
            }
            int settled = probes_served + probes_lost;
            if ((probes_opened == extra && settled == extra) || t >= t_end) break;
            double next_open = probes_opened < extra ? t0 + open_seconds * probes_opened / extra : t_end;
            double wait = next_open - t;
            if (wait > 0.02) wait = 0.02;
            if (wait < 0) wait = 0;
            int n = wait_events((int)(wait * 1000));
            for (int i = 0; i < n; i++) {
                conn_t *c = (conn_t *)evs[i].data.ptr;
                int was = c->served;
                on_event(c, evs[i].events);
                if (c->probe >= 0 && c->served && !was) probe_last_served = now_s();
            }
        }
    } else {
        run_until(t0 + duration, run_once);
    }
    window_close(&w);
    double t1 = w.t1;
    measuring = 0;
    double wall = t1 - t0;
    uint64_t t1_ns = (uint64_t)(t1 * 1e9);

    /* Per connection in the window: lines, and (flood) the longest gap between arrivals,
     * counting the stretches before the first and after the last. */
    uint64_t *per = calloc((size_t)nconns + 1, sizeof *per);
    int nper = 0, silent = 0;
    uint64_t conn_gap = 0;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state != OPEN) continue;
        uint64_t l = (mode == M_OPEN ? c->seq_rx : c->recvd / LINE_LEN) - c->lines_t0;
        per[nper++] = l;
        if (!l) silent++;
        uint64_t g = c->gap_max, tail = t1_ns > c->last_rx ? t1_ns - c->last_rx : 0;
        if (tail > g) g = tail;
        if (g > conn_gap) conn_gap = g;
    }
    if (t1_ns - last_rx_any > gap_any_max) gap_any_max = t1_ns - last_rx_any;
    qsort(per, (size_t)nper, sizeof *per, cmp_u64);

    /* Open loop: stop the schedule and wait for the outstanding echoes. */
    uint64_t unanswered = 0;
    if (mode == M_OPEN) {
        sched_on = 0;
        double deadline = now_s() + drain_seconds;
        for (;;) {
            unanswered = 0;
            for (int i = 0; i < nconns; i++)
                if (conns[i].state == OPEN) unanswered += conns[i].seq_due - conns[i].seq_rx;
            if (!unanswered || now_s() >= deadline) break;
            run_once(10);
        }
    }

    int p_connected = 0;
    for (int i = nconns; i < nconns + extra; i++)
        if (conns[i].served || conns[i].state == OPEN) p_connected++;
    int starved = mode == M_OPEN ? 0 : starved_main();
    if (mode == M_OPEN)
        for (int i = 0; i < nconns; i++)
            if (conns[i].state == OPEN && conns[i].seq_rx == 0) starved++;
    uint64_t bytes_back = 0;
    for (int i = 0; i < nconns; i++) bytes_back += conns[i].recvd;

    printf("{\"mode\": \"%s\", \"conns\": %d, \"depth\": %d, \"window_bytes\": %llu, "
           "\"connect_s\": %.3f, \"window_s\": %.4f, \"open\": %d, \"connect_failed\": %d, "
           "\"dropped\": %d, \"starved\": %d, \"mismatches\": %llu, \"bytes_verified\": %llu, "
           "\"lines\": %llu, \"lines_per_s\": %.1f, \"gen_cpu_pct\": %.1f, "
           "\"gen_busy_pct\": %.1f, \"server_cpu_pct\": %.1f, \"server_rss_kb\": %ld, "
           "\"server_hwm_kb\": %ld",
           mode_s, nconns, depth, (unsigned long long)window_bytes, connect_s, wall,
           n_open, n_failed, n_dropped, starved,
           (unsigned long long)mismatches, (unsigned long long)bytes_back,
           (unsigned long long)lines_window, wall > 0 ? (double)lines_window / wall : 0.0,
           gen_cpu_pct(&w), gen_busy_pct(&w, idle_polls_s), server_cpu_pct(&w),
           status_kb(server_pid, "VmRSS"), status_kb(server_pid, "VmHWM"));
    printf(", \"requested\": %d, \"initiated\": %d, \"connect_rate\": %.0f, \"t0_mono\": %.6f, "
           "\"t1_mono\": %.6f, \"server_cpu_s\": %.3f, \"silent_in_window\": %d, "
           "\"conn_lines_min\": %llu, \"conn_lines_med\": %llu, \"conn_lines_max\": %llu, "
           "\"gap_max_s\": %.4f",
           nconns, n_initiated, connect_rate, t0, t1,
           server_cpu_s(&w), silent,
           (unsigned long long)(nper ? per[0] : 0), (unsigned long long)(nper ? per[nper / 2] : 0),
           (unsigned long long)(nper ? per[nper - 1] : 0), (double)gap_any_max / 1e9);
    if (mode == M_FLOOD) printf(", \"conn_gap_max_s\": %.4f", (double)conn_gap / 1e9);
    if (mode == M_OPEN)
        printf(", \"period_ms\": %.3f, \"offered_per_s\": %.1f, \"due_in_window\": %llu, "
               "\"unanswered\": %llu, \"lat_samples\": %llu, \"lat_skipped\": %llu, "
               "\"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, \"lat_p999_us\": %.1f, "
               "\"lat_max_us\": %.1f",
               period_ms, nconns * 1000.0 / period_ms, (unsigned long long)due_window,
               (unsigned long long)unanswered, (unsigned long long)lat_hist.n,
               (unsigned long long)lat_skipped, hpct_us(&lat_hist, 0.50), hpct_us(&lat_hist, 0.99),
               hpct_us(&lat_hist, 0.999), (double)lat_hist.max / 1000.0);
    free(per);
    print_core_load(&w);
    if (mode == M_CLOSED)
        printf(", \"lat_samples\": %llu, \"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, "
               "\"lat_p999_us\": %.1f, \"lat_max_us\": %.1f",
               (unsigned long long)lat_hist.n, hpct_us(&lat_hist, 0.50), hpct_us(&lat_hist, 0.99),
               hpct_us(&lat_hist, 0.999), (double)lat_hist.max / 1000.0);
    if (mode == M_ACCEPT)
        printf(", \"extra\": %d, \"open_seconds\": %.2f, \"serve_window\": %.2f, "
               "\"probes_opened\": %d, \"probes_connected\": %d, \"probes_served\": %d, "
               "\"probes_failed\": %d, \"last_served_s\": %.3f",
               extra, open_seconds, serve_window, probes_opened, p_connected, probes_served, probes_lost,
               probe_last_served > 0 ? probe_last_served - t0 : -1.0);
    printf("}\n");
    fflush(stdout);
    finish();
    return 0;
}
