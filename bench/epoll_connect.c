/* The connection suite's baseline: the same TCP connects, in C, on epoll.
 *
 *   epoll_connect serve ADDRESS PORT BACKLOG
 *   epoll_connect connect ADDRESS PORT COUNT WINDOW TIMEOUT_SECONDS
 *
 * bench/connections.py compiles this with the system's `cc` into a temporary directory
 * and runs it in the lab's namespaces, in the layout the five_tuple suite uses: as many
 * server processes as the suite's server agents, sharing ADDRESS:PORT with SO_REUSEPORT
 * and listening with the same backlog; as many client processes as its client agents,
 * each making its share of the connections with at most WINDOW non-blocking connects in
 * flight (the suite's `window`), holding every connection until told to reset them.
 *
 * What each side does is what the agents do (hostagent/agent.py `_accept`,
 * hostagent/ops_bulk.py `connect_many`), less the interpreter and the reports:
 * - server: accept until EAGAIN, each accepted socket non-blocking with TCP_NODELAY and
 *   watched for reading (a reset peer is then closed); exits when stdin ends. Prints
 *   "ready PORT" once listening (PORT 0 asks the kernel for one, as the suite does).
 * - client: prints "ready", waits for a line, then connects: a connect that completes
 *   at once (a veth handshake often does, inside connect()) is taken as it is, the others
 *   wait for EPOLLOUT and are judged by SO_ERROR, each within TIMEOUT_SECONDS; every
 *   connected socket gets TCP_NODELAY. Prints "done START END CONNECTED FAILED
 *   [ERRNO:COUNT ...]" (CLOCK_MONOTONIC seconds, as Python's time.monotonic), waits for
 *   a line, resets every connection (SO_LINGER 0: no TIME_WAIT) and prints "closed".
 *
 * Errors in the arguments or the setup go to stderr with exit status 2 or 3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EVENTS 256
#define MAX_ERRNO 256

struct target {
    struct sockaddr_storage addr;
    socklen_t len;
    int family;
};

static void die(int status, const char *what) {
    fprintf(stderr, "epoll_connect: %s: %s\n", what, strerror(errno));
    exit(status);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long number(const char *text, long low, long high, const char *name) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || value < low || value > high) {
        fprintf(stderr, "epoll_connect: %s must be an integer from %ld to %ld, not %s\n", name,
                low, high, text);
        exit(2);
    }
    return value;
}

static struct target parse_target(const char *address, const char *port_text) {
    struct target t;
    memset(&t, 0, sizeof t);
    int port = (int)number(port_text, 0, 65535, "PORT");
    struct sockaddr_in *v4 = (struct sockaddr_in *)&t.addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&t.addr;
    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        t.len = sizeof *v4;
    } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        t.len = sizeof *v6;
    } else {
        fprintf(stderr, "epoll_connect: ADDRESS must be a numeric address, not %s\n", address);
        exit(2);
    }
    t.family = t.addr.ss_family;
    return t;
}

/* Thousands of sockets need thousands of descriptors: take the hard limit. */
static void raise_files_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

static void watch(int epoll, int fd, unsigned events) {
    struct epoll_event event = {.events = events, .data.fd = fd};
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) < 0) die(3, "epoll_ctl");
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "epoll_connect: stdin ended before the go-ahead\n");
        exit(3);
    }
}

static void accept_all(int epoll, int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == ECONNABORTED || errno == EPROTO || errno == ECONNRESET) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                perror("epoll_connect: accept paused for 0.1 s");
                usleep(100000);
                return;
            }
            die(3, "accept");
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        watch(epoll, fd, EPOLLIN);
    }
}

static int serve(const char *address, const char *port, const char *backlog_text) {
    struct target t = parse_target(address, port);
    int backlog = (int)number(backlog_text, 0, 65535, "BACKLOG");
    int listener = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (listener < 0) die(3, "socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&t.addr, t.len) < 0) die(3, "bind");
    if (listen(listener, backlog) < 0) die(3, "listen");
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    if (getsockname(listener, (struct sockaddr *)&bound, &bound_len) < 0) die(3, "getsockname");
    int bound_port = ntohs(bound.ss_family == AF_INET
                               ? ((struct sockaddr_in *)&bound)->sin_port
                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    int epoll = epoll_create1(0);
    if (epoll < 0) die(3, "epoll_create1");
    watch(epoll, listener, EPOLLIN);
    watch(epoll, STDIN_FILENO, EPOLLIN);
    printf("ready %d\n", bound_port);
    fflush(stdout);
    struct epoll_event events[EVENTS];
    char buffer[4096];
    for (;;) {
        int n = epoll_wait(epoll, events, EVENTS, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die(3, "epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                accept_all(epoll, listener);
            } else if (fd == STDIN_FILENO) {
                if (read(fd, buffer, sizeof buffer) <= 0) return 0;
            } else if (read(fd, buffer, sizeof buffer) <= 0) {
                close(fd); /* reset or closed by the client: no longer held */
            }
        }
    }
}

struct client {
    struct target target;
    long count, window, started, finished, connected;
    double timeout;
    int epoll;
    int *held;       /* connected sockets, held until the reset */
    int *inflight;   /* sockets whose connect is under way */
    double *since;   /* by descriptor: when its connect began */
    long active;
    long failures[MAX_ERRNO];
};

static void failed(struct client *c, int error) {
    c->failures[error > 0 && error < MAX_ERRNO ? error : 0]++;
    c->finished++;
}

static void connected(struct client *c, int fd) {
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
        failed(c, errno);
        close(fd);
        return;
    }
    c->held[c->connected++] = fd;
    c->finished++;
}

static void open_one(struct client *c) {
    c->started++;
    int fd = socket(c->target.family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        failed(c, errno);
        return;
    }
    if (connect(fd, (struct sockaddr *)&c->target.addr, c->target.len) == 0) {
        connected(c, fd);
        return;
    }
    if (errno != EINPROGRESS) {
        failed(c, errno);
        close(fd);
        return;
    }
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0) {
        connected(c, fd); /* the handshake finished inside connect() */
        return;
    }
    watch(c->epoll, fd, EPOLLOUT);
    c->since[fd] = now();
    c->inflight[c->active++] = fd;
}

static void settle(struct client *c, long slot, int error) {
    int fd = c->inflight[slot];
    c->inflight[slot] = c->inflight[--c->active];
    epoll_ctl(c->epoll, EPOLL_CTL_DEL, fd, NULL);
    if (error) {
        failed(c, error);
        close(fd);
    } else {
        connected(c, fd);
    }
}

static void on_writable(struct client *c, int fd) {
    for (long slot = 0; slot < c->active; slot++) {
        if (c->inflight[slot] != fd) continue;
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0) error = errno;
        settle(c, slot, error);
        return;
    }
}

static void expire(struct client *c) {
    double t = now();
    for (long slot = c->active - 1; slot >= 0; slot--) {
        if (t - c->since[c->inflight[slot]] >= c->timeout) settle(c, slot, ETIMEDOUT);
    }
}

static int connect_all(const char *address, const char *port, const char *count_text,
                       const char *window_text, const char *timeout_text) {
    static struct client c;
    c.target = parse_target(address, port);
    c.count = number(count_text, 0, 1 << 20, "COUNT");
    c.window = number(window_text, 1, 65536, "WINDOW");
    c.timeout = (double)number(timeout_text, 1, 3600, "TIMEOUT_SECONDS");
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    size_t fds = limit.rlim_cur == RLIM_INFINITY ? (size_t)1 << 20 : (size_t)limit.rlim_cur;
    c.held = calloc((size_t)c.count + 1, sizeof *c.held);
    c.inflight = calloc((size_t)c.window, sizeof *c.inflight);
    c.since = calloc(fds, sizeof *c.since);
    if (!c.held || !c.inflight || !c.since) die(3, "calloc");
    c.epoll = epoll_create1(0);
    if (c.epoll < 0) die(3, "epoll_create1");
    printf("ready\n");
    fflush(stdout);
    wait_line();
    double began = now();
    struct epoll_event events[EVENTS];
    while (c.finished < c.count) {
        while (c.active < c.window && c.started < c.count) open_one(&c);
        if (c.active == 0) continue;
        int n = epoll_wait(c.epoll, events, EVENTS, 100);
        if (n < 0 && errno != EINTR) die(3, "epoll_wait");
        for (int i = 0; i < n; i++) on_writable(&c, events[i].data.fd);
        expire(&c);
    }
    double ended = now();
    long failures = c.count - c.connected;
    printf("done %.9f %.9f %ld %ld", began, ended, c.connected, failures);
    for (int e = 0; e < MAX_ERRNO; e++) {
        if (c.failures[e]) printf(" %d:%ld", e, c.failures[e]);
    }
    printf("\n");
    fflush(stdout);
    wait_line();
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    for (long i = 0; i < c.connected; i++) {
        setsockopt(c.held[i], SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(c.held[i]);
    }
    printf("closed\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    raise_files_limit();
    if (argc == 5 && strcmp(argv[1], "serve") == 0) return serve(argv[2], argv[3], argv[4]);
    if (argc == 7 && strcmp(argv[1], "connect") == 0)
        return connect_all(argv[2], argv[3], argv[4], argv[5], argv[6]);
    fprintf(stderr,
            "usage: epoll_connect serve ADDRESS PORT BACKLOG\n"
            "       epoll_connect connect ADDRESS PORT COUNT WINDOW TIMEOUT_SECONDS\n");
    return 2;
}
