/* An open-loop HTTP/1.1 load generator for `streamrec bench serve`.
 *
 * Request n is due at start + n / rate, whatever the answers do; its latency counts
 * from that due time, so a server that falls behind shows it (no coordinated
 * omission). Each request goes out on an idle keep-alive connection, or a new one
 * (up to MAX_CONN), or waits in a queue, its clock already running. One thread,
 * epoll, nanosecond timeouts (epoll_pwait2): on two shared cores the Python
 * generator it replaces took ~0.5-0.7 ms of CPU per request from the server.
 *
 * usage: loadgen HOST PORT PATH RATE SECONDS BODIES OUT [MAX_CONN] [TIMEOUT_S]
 *   BODIES: one request body (JSON) per line, used in turn.
 *   OUT: one line per request, "<due offset us> <latency us> <status>", where a
 *   failed request has latency -1 and status timeout, closed or connect.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_MAX 65536

enum { IDLE, CONNECTING, BUSY, CLOSED };

typedef struct {
    int fd, state;
    long req;          /* the request in flight, -1 when none */
    size_t sent, len;  /* bytes of its request sent, and the request's length */
    char *out;         /* the request's bytes */
    char in[RECV_MAX];
    size_t got;
    int answered;      /* responses this connection has carried: a reused one may be stale */
} Conn;

typedef struct { long long due_us, latency_us; const char *status; char code[4]; } Result;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static struct sockaddr_in addr;
static int epfd;
static Conn *conns;
static int n_conns, max_conn;
static char **requests; static size_t *request_len; static long n_bodies;
static Result *results;
static long *retry; static long n_retry;  /* sent on a connection the server had closed */
static long total, finished;
static int64_t start_ns, timeout_ns;
static double rate;

static int64_t due_ns(long n) { return start_ns + (int64_t)(n * 1e9 / rate); }

static void finish(long req, const char *status, const char *code, int64_t at) {
    Result *r = &results[req];
    r->due_us = (due_ns(req) - start_ns) / 1000;
    r->status = status;
    if (code) { memcpy(r->code, code, 3); r->code[3] = 0; }
    r->latency_us = status ? -1 : (at - due_ns(req)) / 1000;
    finished++;
}

static void close_conn(Conn *c, const char *why) {
    /* The server closed an idle keep-alive connection as this request went out on
     * it (nothing answered yet): send it again, on another connection, as HTTP
     * clients do; its clock keeps running. */
    if (c->req >= 0 && c->got == 0 && c->answered > 0 && strcmp(why, "closed") == 0)
        retry[n_retry++] = c->req;
    else if (c->req >= 0)
        finish(c->req, why, NULL, now_ns());
    c->req = -1;
    if (c->fd >= 0) { epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
    c->fd = -1;
    c->state = CLOSED;
}

static int open_conn(Conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd; c->state = CONNECTING; c->req = -1; c->got = 0; c->answered = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void pump(Conn *c) {  /* send what is left of the request */
    while (c->sent < c->len) {
        ssize_t n = send(c->fd, c->out + c->sent, c->len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            close_conn(c, "closed");
            return;
        }
        c->sent += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->sent < c->len ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void start_request(Conn *c, long req) {
    c->req = req; c->sent = 0; c->got = 0;
    c->out = requests[req % n_bodies]; c->len = request_len[req % n_bodies];
    if (c->state == IDLE) { c->state = BUSY; pump(c); }
    /* CONNECTING: sent once the connection is up */
}

/* A whole response in c->in: its status code, or 0 while incomplete. */
static int complete_response(Conn *c, char code[4]) {
    c->in[c->got < RECV_MAX ? c->got : RECV_MAX - 1] = 0;
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) return 0;
    size_t header_len = (size_t)(end - c->in) + 4, body = 0;
    for (char *line = strstr(c->in, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) body = strtoul(line + 17, NULL, 10);
    }
    if (c->got < header_len + body) return 0;
    memcpy(code, c->in + 9, 3); code[3] = 0;
    return 1;
}

static void on_event(Conn *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0; socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { close_conn(c, "connect"); return; }
        c->state = c->req >= 0 ? BUSY : IDLE;
        if (c->req >= 0) pump(c);
        else { struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c}; epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev); }
        return;
    }
    if ((events & EPOLLOUT) && c->state == BUSY) pump(c);
    if (c->state == CLOSED || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    int eof = 0;
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->got, RECV_MAX - 1 - c->got, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) { eof = 1; break; }
        if (n < 0) break;
        c->got += (size_t)n;
        if (c->got >= RECV_MAX - 1) { close_conn(c, "closed"); return; }
    }
    char code[4];
    if (c->req >= 0 && complete_response(c, code)) {
        finish(c->req, NULL, code, now_ns());
        c->req = -1; c->got = 0; c->state = IDLE; c->answered++;
    }
    if (eof) close_conn(c, "closed");  /* counts only a request still unanswered */
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: loadgen HOST PORT PATH RATE SECONDS BODIES OUT [MAX_CONN] [TIMEOUT_S]\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", argv[1]); return 2; }
    rate = atof(argv[4]);
    double seconds = atof(argv[5]);
    max_conn = argc > 8 ? atoi(argv[8]) : 512;
    timeout_ns = (int64_t)((argc > 9 ? atof(argv[9]) : 5.0) * 1e9);
    total = (long)(rate * seconds);

    FILE *bodies = fopen(argv[6], "r");
    if (!bodies) { perror(argv[6]); return 2; }
    size_t cap = 1024; n_bodies = 0;
    requests = malloc(cap * sizeof *requests); request_len = malloc(cap * sizeof *request_len);
    char *line = NULL; size_t line_cap = 0; ssize_t line_len;
    while ((line_len = getline(&line, &line_cap, bodies)) > 0) {
        while (line_len && (line[line_len - 1] == '\n' || line[line_len - 1] == '\r')) line[--line_len] = 0;
        if (!line_len) continue;
        if ((size_t)n_bodies == cap) {
            cap *= 2;
            requests = realloc(requests, cap * sizeof *requests);
            request_len = realloc(request_len, cap * sizeof *request_len);
        }
        size_t size = (size_t)line_len + strlen(argv[3]) + strlen(argv[1]) + 160;
        requests[n_bodies] = malloc(size);
        request_len[n_bodies] = (size_t)snprintf(requests[n_bodies], size,
            "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
            "Content-Length: %zd\r\n\r\n%s", argv[3], argv[1], argv[2], line_len, line);
        n_bodies++;
    }
    fclose(bodies);
    if (!n_bodies) { fprintf(stderr, "no bodies in %s\n", argv[6]); return 2; }

    results = calloc((size_t)total, sizeof *results);
    conns = calloc((size_t)max_conn, sizeof *conns);
    long *queue = malloc((size_t)total * sizeof *queue), q_head = 0, q_tail = 0;
    retry = malloc((size_t)total * sizeof *retry);
    epfd = epoll_create1(0);
    struct epoll_event events[256];
    long next = 0;
    start_ns = now_ns();

    while (finished < total) {
        int64_t now = now_ns();
        while (next < total && due_ns(next) <= now) queue[q_tail++] = next++;
        /* Requests queued past the timeout fail without being sent. */
        while (q_head < q_tail && now - due_ns(queue[q_head]) > timeout_ns) finish(queue[q_head++], "timeout", NULL, now);
        for (int i = 0; i < n_conns; i++) {
            Conn *c = &conns[i];
            if (c->req >= 0 && now - due_ns(c->req) > timeout_ns) close_conn(c, "timeout");
        }
        while (n_retry > 0 || q_head < q_tail) {
            Conn *c = NULL;
            for (int i = 0; i < n_conns; i++) if (conns[i].state == IDLE) { c = &conns[i]; break; }
            if (!c) {
                for (int i = 0; i < n_conns; i++) if (conns[i].state == CLOSED) { c = &conns[i]; break; }
                if (!c && n_conns < max_conn) c = &conns[n_conns++];
                if (!c) break;
                long req = n_retry > 0 ? retry[n_retry - 1] : queue[q_head];
                if (open_conn(c) < 0) {
                    c->fd = -1; c->state = CLOSED;
                    if (n_retry > 0) n_retry--; else q_head++;
                    finish(req, "connect", NULL, now_ns());
                    continue;
                }
            }
            start_request(c, n_retry > 0 ? retry[--n_retry] : queue[q_head++]);
        }
        int64_t wait_ns = next < total ? due_ns(next) - now_ns() : 10000000;
        if (wait_ns < 0) wait_ns = 0;
        if (wait_ns > 10000000) wait_ns = 10000000;
        struct timespec wait = {.tv_sec = 0, .tv_nsec = wait_ns};
        int n = epoll_pwait2(epfd, events, 256, &wait, NULL);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    }
    double elapsed = (now_ns() - start_ns) / 1e9;

    FILE *out = fopen(argv[7], "w");
    if (!out) { perror(argv[7]); return 2; }
    fprintf(out, "# sent %ld elapsed %.6f connections %d\n", total, elapsed, n_conns);
    for (long i = 0; i < total; i++) {
        Result *r = &results[i];
        fprintf(out, "%lld %lld %s\n", r->due_us, r->latency_us, r->status ? r->status : r->code);
    }
    fclose(out);
    return 0;
}
