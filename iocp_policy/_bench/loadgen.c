/*
 * loadgen: the load generator of `python -m iocp_policy bench`.
 *
 * THREADS worker threads (default 1), each with its own epoll set
 * (edge-triggered) and its share of the connections; closed loop: every
 * connection has at most one request in flight, the next one leaves when the
 * reply is complete.  Give it as many threads as it has cores.
 *
 *   echo   send SIZE bytes, wait until the same SIZE bytes come back (checked)
 *   http   GET / HTTP/1.1 on a keep-alive connection, wait for the whole
 *          response (headers + Content-Length body)
 *   churn  connect, send SIZE bytes, wait for the echo, close; CONNS of those
 *          at a time
 *
 * It runs WARMUP seconds unmeasured, then DURATION seconds measured.  At the
 * two edges of the measured window it reads utime+stime of itself and of the
 * server process from /proc/<pid>/stat, so both CPU times cover exactly the
 * window (the main thread does that; workers only count).  Output: one JSON
 * object on stdout.  Exit status 0, or 1 with
 * {"error": "..."} when the server could not be reached at all.
 *
 * Built by the benchmark with `cc -O2 -pthread`; no dependencies beyond libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_ECHO, MODE_HTTP, MODE_CHURN };
enum phase { PH_CONNECTING, PH_SENDING, PH_RECEIVING };

struct worker;

struct conn {
    int fd;
    enum phase phase;
    size_t sent;
    size_t received;
    size_t expected; /* bytes of the reply; 0 = not known yet (http headers) */
    uint64_t t_start;
    char *buf;
    struct worker *w;
};

static struct {
    enum mode mode;
    const char *host;
    int port;
    int conns;
    int threads;
    size_t size;
    double warmup;
    double duration;
    int server_pid;
    const char *request; /* bytes sent per request */
    size_t request_len;
    size_t bufcap;
    uint64_t t_measure, t_end; /* CLOCK_MONOTONIC ns: the measured window */
} cfg;

struct worker {
    pthread_t thread;
    int epfd;
    struct conn *conns;
    int nconns;
    int measuring;
    uint64_t requests;
    uint64_t bytes; /* received in complete replies */
    uint64_t errors;
    const char *last_error;
    uint32_t *lat; /* nanoseconds, saturating */
    size_t nlat, caplat;
};

static struct sockaddr_in addr;
static char *payload;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* utime + stime of a process from /proc/<pid>/stat, in seconds; -1 if unreadable. */
static double proc_cpu_seconds(int pid) {
    char path[64], line[2048];
    if (pid > 0)
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
    else
        snprintf(path, sizeof path, "/proc/self/stat");
    FILE *f = fopen(path, "r");
    if (!f) return -1.0;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    char *p = strrchr(line, ')'); /* the command name may contain spaces */
    if (!p) return -1.0;
    unsigned long long utime = 0, stime = 0;
    /* after ")": field 3 (state) ... field 14 utime, field 15 stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1.0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static void record_latency(struct worker *w, uint64_t ns) {
    if (!w->measuring) return;
    if (w->nlat == w->caplat) {
        w->caplat = w->caplat ? w->caplat * 2 : 1 << 16;
        w->lat = realloc(w->lat, w->caplat * sizeof *w->lat);
        if (!w->lat) { perror("realloc"); exit(2); }
    }
    w->lat[w->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void count_error(struct worker *w, const char *what) {
    w->last_error = what;
    if (w->measuring) w->errors++;
}

static int open_socket(int nonblocking_connect, int *in_progress) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking_connect ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *in_progress = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (nonblocking_connect && errno == EINPROGRESS) {
            *in_progress = 1;
        } else {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
    }
    if (!nonblocking_connect) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void start_request(struct conn *c) {
    c->phase = PH_SENDING;
    c->sent = 0;
    c->received = 0;
    c->expected = cfg.mode == MODE_HTTP ? 0 : cfg.size;
    if (cfg.mode != MODE_CHURN) c->t_start = now_ns();
}

/* (Re)open the connection of slot c and register it. 0 ok, -1 failed. */
static int open_conn(struct conn *c) {
    int in_progress;
    uint64_t t0 = now_ns();
    c->fd = open_socket(cfg.mode == MODE_CHURN, &in_progress);
    if (c->fd < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
    start_request(c);
    c->t_start = t0;
    if (in_progress) c->phase = PH_CONNECTING;
    return 0;
}

static void close_conn(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* closing removes it from the epoll set */
    c->fd = -1;
}

/* http: once the headers are in, work out the full length of the response. */
static int parse_http(struct conn *c) {
    c->buf[c->received] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->received < cfg.bufcap - 1 ? 0 : -1;
    if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) return -1;
    size_t header_len = (size_t)(end - c->buf) + 4;
    char *p = c->buf;
    long length = -1;
    while ((p = strchr(p, '\n')) != NULL && p < end) {
        p++;
        if (strncasecmp(p, "content-length:", 15) == 0) { length = strtol(p + 15, NULL, 10); break; }
    }
    if (length < 0 || header_len + (size_t)length > cfg.bufcap - 1) return -1;
    c->expected = header_len + (size_t)length;
    return 0;
}

/* A reply is complete: account for it and start the next request. */
static void finish_request(struct conn *c) {
    struct worker *w = c->w;
    record_latency(w, now_ns() - c->t_start);
    if (w->measuring) {
        w->requests++;
        w->bytes += c->received;
    }
    if (cfg.mode == MODE_CHURN) {
        close_conn(c);
        if (open_conn(c) < 0) count_error(w, "connect failed");
        return;
    }
    start_request(c);
}

/* The connection of slot c broke or misbehaved: count it and open a new one. */
static void fail(struct conn *c, const char *why) {
    count_error(c->w, why);
    close_conn(c);
    if (open_conn(c) < 0) count_error(c->w, "reconnect failed");
}

/* Drive one connection as far as it goes without waiting.  Edge-triggered
 * epoll reports every arrival of data, so after a request is sent, or after
 * a read that left the socket empty, the next edge resumes it: no read is
 * spent on EAGAIN in the common case. */
static void drive(struct conn *c) {
    while (c->fd >= 0) {
        if (c->phase == PH_CONNECTING) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) { fail(c, strerror(err)); return; }
            c->phase = PH_SENDING; /* a send before the handshake ends gets EAGAIN */
        }
        if (c->phase == PH_SENDING) {
            ssize_t n = send(c->fd, cfg.request + c->sent, cfg.request_len - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == ENOTCONN) return;
                { fail(c, strerror(errno)); return; }
            }
            c->sent += (size_t)n;
            if (c->sent < cfg.request_len) continue;
            c->phase = PH_RECEIVING;
            return; /* the reply's arrival is the next edge */
        }
        size_t room = cfg.bufcap - 1 - c->received;
        if (room == 0) { fail(c, "reply too large"); return; }
        ssize_t n = recv(c->fd, c->buf + c->received, room, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            { fail(c, strerror(errno)); return; }
        }
        if (n == 0) { fail(c, "server closed the connection"); return; }
        c->received += (size_t)n;
        if (cfg.mode == MODE_HTTP && c->expected == 0 && parse_http(c) < 0)
            { fail(c, "bad HTTP response"); return; }
        if (c->expected == 0 || c->received < c->expected) {
            if ((size_t)n < room) return; /* socket drained: wait for the next edge */
            continue;
        }
        if (c->received > c->expected) { fail(c, "more bytes than one reply"); return; }
        if (cfg.mode != MODE_HTTP && memcmp(c->buf, payload, cfg.size) != 0)
            { fail(c, "echo differs from what was sent"); return; }
        finish_request(c);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct epoll_event events[256];
    for (int i = 0; i < w->nconns; i++) drive(&w->conns[i]);
    for (;;) {
        uint64_t t = now_ns();
        if (!w->measuring && t >= cfg.t_measure) w->measuring = 1;
        if (t >= cfg.t_end) break;
        uint64_t next = w->measuring ? cfg.t_end : cfg.t_measure;
        int timeout_ms = (int)((next - t) / 1000000u) + 1;
        int n = epoll_wait(w->epfd, events, 256, timeout_ms);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); exit(2); }
        for (int i = 0; i < n; i++) drive(events[i].data.ptr);
        /* slots whose reconnect failed try again */
        for (int i = 0; i < w->nconns; i++)
            if (w->conns[i].fd < 0 && open_conn(&w->conns[i]) == 0) drive(&w->conns[i]);
    }
    return NULL;
}

static void sleep_until(uint64_t t_ns) {
    struct timespec ts = {.tv_sec = (time_t)(t_ns / 1000000000u), .tv_nsec = (long)(t_ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen -m echo|http|churn -p PORT [-H 127.0.0.1] [-c CONNS] [-s SIZE]\n"
                    "               [-t THREADS] [-w WARMUP_S] [-d DURATION_S] [-S SERVER_PID]\n");
    exit(2);
}

int main(int argc, char **argv) {
    cfg.host = "127.0.0.1";
    cfg.conns = 10;
    cfg.threads = 1;
    cfg.size = 1024;
    cfg.warmup = 1.0;
    cfg.duration = 5.0;
    int opt;
    const char *mode = "echo";
    while ((opt = getopt(argc, argv, "m:H:p:c:t:s:w:d:S:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'H': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 't': cfg.threads = atoi(optarg); break;
        case 's': cfg.size = (size_t)atol(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'S': cfg.server_pid = atoi(optarg); break;
        default: usage();
        }
    }
    if (strcmp(mode, "echo") == 0) cfg.mode = MODE_ECHO;
    else if (strcmp(mode, "http") == 0) cfg.mode = MODE_HTTP;
    else if (strcmp(mode, "churn") == 0) cfg.mode = MODE_CHURN;
    else usage();
    if (cfg.port <= 0 || cfg.conns <= 0 || cfg.size == 0 || cfg.duration <= 0 || cfg.threads <= 0) usage();
    if (cfg.threads > cfg.conns) cfg.threads = cfg.conns;

    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg.port);
    if (inet_pton(AF_INET, cfg.host, &addr.sin_addr) != 1) usage();

    if (cfg.mode == MODE_HTTP) {
        static const char req[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iocp-policy-loadgen\r\n\r\n";
        cfg.request = req;
        cfg.request_len = sizeof req - 1;
        cfg.bufcap = 1 << 20;
    } else {
        payload = malloc(cfg.size);
        for (size_t i = 0; i < cfg.size; i++) payload[i] = (char)('a' + i % 26);
        cfg.request = payload;
        cfg.request_len = cfg.size;
        cfg.bufcap = cfg.size + 1;
    }

    struct conn *conns = calloc((size_t)cfg.conns, sizeof *conns);
    struct worker *workers = calloc((size_t)cfg.threads, sizeof *workers);
    for (int t = 0; t < cfg.threads; t++) {
        struct worker *w = &workers[t];
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->last_error = "";
        w->conns = conns + (size_t)t * (size_t)cfg.conns / (size_t)cfg.threads;
        w->nconns = (int)((size_t)(t + 1) * (size_t)cfg.conns / (size_t)cfg.threads
                          - (size_t)t * (size_t)cfg.conns / (size_t)cfg.threads);
        for (int i = 0; i < w->nconns; i++) {
            struct conn *c = &w->conns[i];
            c->w = w;
            c->buf = malloc(cfg.bufcap);
            if (open_conn(c) < 0) {
                printf("{\"error\": \"connect to %s:%d failed: %s\"}\n", cfg.host, cfg.port, strerror(errno));
                return 1;
            }
        }
    }
    uint64_t t0 = now_ns();
    cfg.t_measure = t0 + (uint64_t)(cfg.warmup * 1e9);
    cfg.t_end = cfg.t_measure + (uint64_t)(cfg.duration * 1e9);
    for (int t = 0; t < cfg.threads; t++)
        if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0) { perror("pthread"); return 2; }

    sleep_until(cfg.t_measure);
    uint64_t t_start_measured = now_ns();
    double cpu0_self = proc_cpu_seconds(0);
    double cpu0_server = proc_cpu_seconds(cfg.server_pid);
    sleep_until(cfg.t_end);
    uint64_t t_stop = now_ns();
    double cpu1_self = proc_cpu_seconds(0);
    double cpu1_server = proc_cpu_seconds(cfg.server_pid);
    for (int t = 0; t < cfg.threads; t++) pthread_join(workers[t].thread, NULL);
    double seconds = (double)(t_stop - t_start_measured) / 1e9;

    /* merge what the workers counted */
    uint64_t requests = 0, bytes = 0, errors = 0;
    size_t nlat = 0;
    const char *last_error = "";
    for (int t = 0; t < cfg.threads; t++) {
        requests += workers[t].requests;
        bytes += workers[t].bytes;
        errors += workers[t].errors;
        nlat += workers[t].nlat;
        if (workers[t].errors) last_error = workers[t].last_error;
    }
    uint32_t *lat = malloc((nlat ? nlat : 1) * sizeof *lat);
    for (int t = 0, k = 0; t < cfg.threads; t++) {
        memcpy(lat + k, workers[t].lat, workers[t].nlat * sizeof *lat);
        k += (int)workers[t].nlat;
    }

    double p50 = 0, p99 = 0, pmax = 0;
    if (nlat) {
        qsort(lat, nlat, sizeof *lat, cmp_u32);
        p50 = lat[(nlat - 1) / 2] / 1e3;
        p99 = lat[(size_t)((double)(nlat - 1) * 0.99)] / 1e3;
        pmax = lat[nlat - 1] / 1e3;
    }
    printf("{\"mode\": \"%s\", \"conns\": %d, \"threads\": %d, \"size\": %zu, \"seconds\": %.6f, \"requests\": %llu, "
           "\"bytes\": %llu, \"errors\": %llu, \"last_error\": \"%s\", \"p50_us\": %.1f, \"p99_us\": %.1f, "
           "\"max_us\": %.1f, \"client_cpu_s\": %.3f, \"server_cpu_s\": %.3f}\n",
           mode, cfg.conns, cfg.threads, cfg.size, seconds, (unsigned long long)requests,
           (unsigned long long)bytes, (unsigned long long)errors, last_error, p50, p99, pmax,
           cpu1_self - cpu0_self,
           (cfg.server_pid > 0 && cpu0_server >= 0 && cpu1_server >= 0) ? cpu1_server - cpu0_server : -1.0);
    return 0;
}
