/* common.h: what the two load generators of tools/bench.py share, load.c (plain TCP)
 * and tlsload.c (the same over OpenSSL). Each is one translation unit compiled on its
 * own (tools/benchlib/base.py, compile_c), so everything here is static; the includer
 * defines _GNU_SOURCE before any header.
 *
 * Here: the options both take, the clocks, CPU and memory accounting (this process, the
 * server from /proc, the two pinned cores), the measured window and the JSON figures
 * made from it, the latency histogram, non-blocking sockets on edge-triggered epoll and
 * the check of the echoed "ping\n" stream. Each program keeps its own modes, connection
 * states and event handling.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
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

#define LINE "ping\n"
#define LINE_LEN 5

/* The options both take (common_option); each program has its own besides. */
static int port = 9000, nconns = 1, server_pid = 0;
static double duration = 3, warmup = 0.5, connect_timeout = 30, max_seconds = 0;
static double drain_seconds = 5;
static uint64_t window_bytes = 65536;
static int cores[2] = {-1, -1};  /* --cores S,L: the server's and this process's CPUs */
static int spin = 0;             /* --spin 1: poll without sleeping once connected */

/* 1 if `a` is one of the options above (its value `v` is stored), else 0. */
static int common_option(const char *a, const char *v) {
    if (!strcmp(a, "--port")) port = atoi(v);
    else if (!strcmp(a, "--conns")) nconns = atoi(v);
    else if (!strcmp(a, "--window")) window_bytes = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--duration")) duration = atof(v);
    else if (!strcmp(a, "--warmup")) warmup = atof(v);
    else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
    else if (!strcmp(a, "--drain-seconds")) drain_seconds = atof(v);
    else if (!strcmp(a, "--max-seconds")) max_seconds = atof(v);
    else if (!strcmp(a, "--server-pid")) server_pid = atoi(v);
    else if (!strcmp(a, "--spin")) spin = atoi(v);
    else if (!strcmp(a, "--cores")) sscanf(v, "%d,%d", &cores[0], &cores[1]);
    else return 0;
    return 1;
}

/* The command line, "--name value" pairs: --mode into *mode_s, the options above, and
 * those `own` takes (1 if it took one). 0, or the exit status 2 once it has said what is
 * wrong. */
static int parse_args(const char *prog, int argc, char **argv, const char **mode_s,
                      int (*own)(const char *a, const char *v)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "%s: %s needs a value\n", prog, a); return 2; }
        i++;
        if (!strcmp(a, "--mode")) *mode_s = v;
        else if (!common_option(a, v) && !own(a, v)) {
            fprintf(stderr, "%s: unknown option %s\n", prog, a);
            return 2;
        }
    }
    return 0;
}

/* Bounded in time: SIGALRM's default action ends the process a second after max_s,
 * whatever happens. A peer that goes away is an error return, not SIGPIPE. As many
 * descriptors as the hard limit allows. */
static void process_setup(double max_s) {
    alarm((unsigned)max_s + 1);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
}

/* p[0..len) = "ping\n" repeated: any offset into it is where a stream of lines resumes. */
static void fill_pattern(char *p, size_t len) {
    for (size_t i = 0; i < len; i++) p[i] = LINE[i % LINE_LEN];
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
static double now_s(void) { return (double)now_ns() / 1e9; }

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double cpu_of(int pid) {
    if (!pid) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long status_kb(int pid, const char *key) {
    if (!pid) return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') { v = atol(line + kl + 1); break; }
    fclose(f);
    return v;
}

/* CPU time (s) a core spent running tasks (user+nice+system) and stolen by the hypervisor. */
static void core_times(int core, double *busy, double *steal) {
    *busy = *steal = 0;
    if (core < 0) return;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    char line[512], want[16];
    int wl = snprintf(want, sizeof want, "cpu%d ", core);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, (size_t)wl)) continue;
        unsigned long long u = 0, n = 0, sy = 0, id = 0, io = 0, irq = 0, sirq = 0, st = 0;
        sscanf(line + wl, "%llu %llu %llu %llu %llu %llu %llu %llu", &u, &n, &sy, &id, &io, &irq, &sirq, &st);
        double hz = (double)sysconf(_SC_CLK_TCK);
        *busy = (double)(u + n + sy) / hz;
        *steal = (double)st / hz;
        break;
    }
    fclose(f);
}

/* The measured window: wall time, this process's CPU, the server's (--server-pid; -1 if
 * unreadable) and the busy and stolen time of the two cores (--cores). */
typedef struct {
    double t0, t1, me0, me1, srv0, srv1;
    double cb0[2], cs0[2], cb1[2], cs1[2];
} window_t;

static void window_open(window_t *w) {
    core_times(cores[0], &w->cb0[0], &w->cs0[0]);
    core_times(cores[1], &w->cb0[1], &w->cs0[1]);
    w->srv0 = cpu_of(server_pid);
    w->me0 = cpu_self();
    w->t0 = now_s();
}

static void window_close(window_t *w) {
    w->t1 = now_s();
    w->me1 = cpu_self();
    w->srv1 = cpu_of(server_pid);
    core_times(cores[0], &w->cb1[0], &w->cs1[0]);
    core_times(cores[1], &w->cb1[1], &w->cs1[1]);
}

/* The figures every result reports from the window. */
static double gen_cpu_pct(const window_t *w) {
    double wall = w->t1 - w->t0;
    return wall > 0 ? 100.0 * (w->me1 - w->me0) / wall : 0.0;
}
/* idle_s: time spent in polls that found nothing (spinning), not counted as busy. */
static double gen_busy_pct(const window_t *w, double idle_s) {
    double wall = w->t1 - w->t0;
    return wall > 0 ? 100.0 * ((w->me1 - w->me0) / wall) * (1.0 - idle_s / wall) : 0.0;
}
static double server_cpu_pct(const window_t *w) {
    double wall = w->t1 - w->t0;
    return (server_pid && wall > 0 && w->srv0 >= 0 && w->srv1 >= 0) ? 100.0 * (w->srv1 - w->srv0) / wall : -1.0;
}
static double server_cpu_s(const window_t *w) {
    return (server_pid && w->srv0 >= 0 && w->srv1 >= 0) ? w->srv1 - w->srv0 : -1.0;
}

/* With --cores, the JSON fields of what else ran on the two cores during the window:
 * other tasks, and steal. */
static void print_core_load(const window_t *w) {
    double wall = w->t1 - w->t0;
    if (cores[0] < 0 || wall <= 0) return;
    double other_s = 100.0 * (w->cb1[0] - w->cb0[0] - (w->srv1 - w->srv0)) / wall;
    double other_l = 100.0 * (w->cb1[1] - w->cb0[1] - (w->me1 - w->me0)) / wall;
    printf(", \"other_on_server_core_pct\": %.1f, \"other_on_load_core_pct\": %.1f, "
           "\"steal_pct\": %.1f", other_s < 0 ? 0 : other_s, other_l < 0 ? 0 : other_l,
           100.0 * (w->cs1[0] - w->cs0[0] + w->cs1[1] - w->cs0[1]) / wall);
}

/* Latency histogram: exact below 256 ns, then 128 sub-buckets per power of two (<0.8 %). */
typedef struct { uint64_t b[8192]; uint64_t n, max; } hist_t;

static int hbucket(uint64_t v) {
    if (v < 256) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int b = 256 + (msb - 8) * 128 + (int)((v >> (msb - 7)) & 127);
    return b < 8192 ? b : 8191;
}
static double hvalue(int b) {  /* the middle of bucket b, in ns */
    if (b < 256) return b;
    int m = (b - 256) / 128 + 8, sub = (b - 256) % 128;
    double lo = (double)(128 + sub) * (double)(1ull << (m - 7));
    return lo + (double)(1ull << (m - 7)) / 2;
}
static void hadd(hist_t *h, uint64_t v) {  /* v in ns */
    h->b[hbucket(v)]++;
    h->n++;
    if (v > h->max) h->max = v;
}
static double hpct_us(const hist_t *h, double p) {  /* -1 if empty */
    if (!h->n) return -1;
    uint64_t want = (uint64_t)(p * (double)h->n + 0.999999), acc = 0;
    if (want < 1) want = 1;
    for (int b = 0; b < 8192; b++) {
        acc += h->b[b];
        if (acc >= want) return hvalue(b) / 1000.0;
    }
    return (double)h->max / 1000.0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* 127.0.0.1:port_ */
static struct sockaddr_in loopback(int port_) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A non-blocking TCP socket with Nagle off; -1 if socket() failed (errno says why). */
static int tcp_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Watch fd on ep, edge-triggered, with `ptr` as its event data, and start connecting it
 * to addr: completion or failure arrives as EPOLLOUT (then connect_error). -1 if
 * connect() failed at once (errno says why). */
static int watch_and_connect(int ep, int fd, void *ptr, const struct sockaddr_in *addr) {
    struct epoll_event ev = {0};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = ptr;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) return -1;
    return 0;
}

/* How a non-blocking connect ended: 0, or the errno it failed with. */
static int connect_error(int fd) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    return err;
}

/* Close with RST (SO_LINGER 0), so no TIME_WAIT piles up over many runs. */
static void close_rst(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* The stream back must be exactly "ping\n" repeated, from where it left off (`pat`, from
 * fill_pattern, at least n + LINE_LEN long), and never more than was sent: each breach
 * counts one in *mismatches. Advances *recvd by n; returns the whole lines n completed. */
static uint64_t check_echo(const char *pat, const char *data, size_t n, uint64_t *recvd,
                           uint64_t sent, uint64_t *mismatches) {
    if (memcmp(data, pat + *recvd % LINE_LEN, n) != 0) (*mismatches)++;
    uint64_t before = *recvd / LINE_LEN;
    *recvd += n;
    if (*recvd > sent) (*mismatches)++;  /* more back than was ever sent */
    return *recvd / LINE_LEN - before;
}

/* Run the event loop (one turn: `turn`, at most timeout_ms long) until t_end (s). */
static void run_until(double t_end, void (*turn)(int timeout_ms)) {
    for (;;) {
        double left = t_end - now_s();
        if (left <= 0) return;
        turn(left > 0.05 ? 50 : (int)(left * 1000) + 1);
    }
}

#endif
