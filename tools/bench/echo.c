/* echo.c: the physical-limit reference for tools/bench.py, a small C epoll line echo.
 *
 *     cc -O2 -o echo echo.c && ./echo --port 0 --max-seconds 60
 *
 * Same contract as line-echo: every '\n'-terminated line goes back byte for byte, a
 * partial line is kept until its newline arrives, and a connection whose pending
 * output exceeds 64 KiB is not read until it drains (backpressure). Level-triggered
 * epoll, non-blocking sockets, one thread. Prints "listening on 127.0.0.1:PORT" as its
 * first stdout line, stops on SIGTERM/SIGINT or after --max-seconds (default 600), so a
 * forgotten instance never outlives its benchmark. Loopback only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define OUT_HIGH 65536        /* stop reading a connection with more pending output */

typedef struct {
    char *in;        /* partial line kept between reads */
    size_t in_len, in_cap;
    char *out;       /* echo not yet accepted by the kernel */
    size_t out_off, out_len, out_cap;
    int want_out;    /* EPOLLOUT registered */
    int paused;      /* EPOLLIN dropped because out is backed up */
} conn_t;

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static conn_t **conns;   /* indexed by fd; NULL when the fd is not a connection */
static int nconns_cap;
static int ep;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) { perror("realloc"); exit(1); }
    return q;
}

static void drop(int fd) {
    conn_t *c = conns[fd];
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (c) { free(c->in); free(c->out); free(c); }
    conns[fd] = NULL;
}

static void set_events(int fd, conn_t *c) {
    struct epoll_event ev = {0};
    ev.data.fd = fd;
    ev.events = (c->paused ? 0 : EPOLLIN) | (c->want_out ? EPOLLOUT : 0);
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static void append(char **buf, size_t *len, size_t *cap, const char *src, size_t n) {
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n) nc *= 2;
        *buf = xrealloc(*buf, nc);
        *cap = nc;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
}

/* Write pending output; 0 on success (maybe partial), -1 if the connection died. */
static int flush_out(int fd, conn_t *c) {
    while (c->out_len > c->out_off) {
        ssize_t w = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > 4 * OUT_HIGH) { free(c->out); c->out = NULL; c->out_cap = 0; }
    }
    return 0;
}

/* Send data[0:n] now, queueing whatever the kernel refuses. */
static int echo(int fd, conn_t *c, const char *data, size_t n) {
    if (c->out_len == c->out_off) {
        while (n) {
            ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                return -1;
            }
            data += w;
            n -= (size_t)w;
        }
    }
    if (n) append(&c->out, &c->out_len, &c->out_cap, data, n);
    return 0;
}

static char rbuf[READ_CHUNK];

static void on_readable(int fd, conn_t *c) {
    for (int rounds = 0; rounds < 16 && !c->paused; rounds++) {
        ssize_t r = recv(fd, rbuf, sizeof rbuf, 0);
        if (r == 0) {
            if (c->in_len) echo(fd, c, c->in, c->in_len);  /* the trailing partial, as line-echo */
            flush_out(fd, c);
            drop(fd);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            drop(fd);
            return;
        }
        /* Everything up to the last newline goes back; the rest is kept. */
        char *last = memrchr(rbuf, '\n', (size_t)r);
        if (!last) {
            append(&c->in, &c->in_len, &c->in_cap, rbuf, (size_t)r);
            continue;
        }
        size_t head = (size_t)(last - rbuf) + 1;
        int rc = 0;
        if (c->in_len) {
            append(&c->in, &c->in_len, &c->in_cap, rbuf, head);
            rc = echo(fd, c, c->in, c->in_len);
            c->in_len = 0;
        } else {
            rc = echo(fd, c, rbuf, head);
        }
        if (rc < 0) { drop(fd); return; }
        if ((size_t)r > head) append(&c->in, &c->in_len, &c->in_cap, rbuf + head, (size_t)r - head);
        if (c->in_len == 0 && c->in_cap > READ_CHUNK) { free(c->in); c->in = NULL; c->in_cap = 0; }
        size_t pending = c->out_len - c->out_off;
        if (pending && !c->want_out) { c->want_out = 1; set_events(fd, c); }
        if (pending > OUT_HIGH) { c->paused = 1; set_events(fd, c); }
        if ((size_t)r < sizeof rbuf) return;  /* short read: the socket is empty */
    }
}

static void on_writable(int fd, conn_t *c) {
    if (flush_out(fd, c) < 0) { drop(fd); return; }
    size_t pending = c->out_len - c->out_off;
    int changed = 0;
    if (!pending && c->want_out) { c->want_out = 0; changed = 1; }
    if (c->paused && pending <= OUT_HIGH / 2) { c->paused = 0; changed = 1; }
    if (changed) set_events(fd, c);
}

int main(int argc, char **argv) {
    int port = 0, backlog = 4096;
    double max_seconds = 600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backlog") && i + 1 < argc) backlog = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-seconds") && i + 1 < argc) max_seconds = atof(argv[++i]);
        else { fprintf(stderr, "usage: echo [--port N] [--backlog N] [--max-seconds S]\n"); return 2; }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    getrlimit(RLIMIT_NOFILE, &rl);
    nconns_cap = (int)(rl.rlim_cur > 1048576 ? 1048576 : rl.rlim_cur);
    conns = calloc((size_t)nconns_cap, sizeof *conns);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, backlog) < 0) {
        perror("echo: listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    printf("listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.fd = ls;
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);

    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct epoll_event events[1024];
    while (!stop_flag) {
        int n = epoll_wait(ep, events, 1024, 200);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 > max_seconds) break;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == ls) {
                for (int k = 0; k < 128; k++) {  /* accepts per wakeup are budgeted */
                    int cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    if (cfd >= nconns_cap) { close(cfd); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[cfd] = calloc(1, sizeof(conn_t));
                    struct epoll_event cev = {0};
                    cev.events = EPOLLIN;
                    cev.data.fd = cfd;
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            conn_t *c = conns[fd];
            if (!c) continue;
            uint32_t e = events[i].events;
            if (e & EPOLLOUT) { on_writable(fd, c); c = conns[fd]; if (!c) continue; }
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd, c);
        }
    }
    return 0;
}
