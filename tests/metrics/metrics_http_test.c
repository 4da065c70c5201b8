/* metrics_http_test: the metrics listener (services/metrics_http.h) over plaintext loopback:
 * /metrics, /health (etcd's bodies and codes), /version, 404 and 405, and bad input - garbage,
 * a huge header, more connections than allowed - never stops it answering others. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "services/metrics_http.h"

static _Atomic bool healthy = true;

static void render(void *arg, struct metrics_buf *b)
{
    (void)arg;
    metrics_family(b, "x_total", "counter", "a test counter");
    metrics_sample_u64(b, "x_total", NULL, 42);
}

static bool health(void *arg, char *reason, size_t len)
{
    (void)arg;
    if (atomic_load(&healthy))
        return true;
    snprintf(reason, len, "RAFT NO LEADER");
    return false;
}

static struct metrics_http *start(unsigned max_conns)
{
    struct cluster_url u = {.tls = false, .host = "127.0.0.1", .port = 0};
    struct metrics_http_config cfg = {
        .urls = &u, .n_urls = 1, .max_connections = max_conns, .timeout_s = 2,
        .render = render, .health = health, .version = "3.4.0",
    };
    char err[256];
    struct metrics_http *m = metrics_http_start(&cfg, err, sizeof err);
    cr_assert(m, "%s", err);
    return m;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Sends req, reads until the server closes or 3 s pass; returns bytes read. */
static size_t exchange(int port, const char *req, size_t reqlen, char *out, size_t outlen)
{
    int fd = dial(port);
    size_t off = 0;
    while (off < reqlen) {
        ssize_t n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    size_t got = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (got + 1 < outlen && poll(&p, 1, 3000) == 1) {
        ssize_t n = recv(fd, out + got, outlen - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    out[got] = '\0';
    close(fd);
    return got;
}

static void get(int port, const char *method, const char *path, char *out, size_t outlen)
{
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     method, path);
    exchange(port, req, (size_t)n, out, outlen);
}

Test(metrics_http, routes_and_codes)
{
    struct metrics_http *m = start(0);
    int port = metrics_http_port(m, 0);
    cr_assert_gt(port, 0);
    char out[8192];

    get(port, "GET", "/metrics", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
    cr_assert(strstr(out, "Content-Type: text/plain; version=0.0.4"), "%s", out);
    cr_assert(strstr(out, "\r\n\r\n# HELP x_total a test counter\n# TYPE x_total counter\nx_total 42\n"),
              "%s", out);

    get(port, "GET", "/metrics?name[]=x", out, sizeof out);
    cr_assert(strstr(out, "x_total 42"), "%s", out);

    get(port, "GET", "/health", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
    cr_assert(strstr(out, "\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}"), "%s", out);
    atomic_store(&healthy, false);
    get(port, "GET", "/health", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 503"), "%s", out);
    cr_assert(strstr(out, "\r\n\r\n{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"), "%s", out);
    atomic_store(&healthy, true);

    get(port, "GET", "/version", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
    cr_assert(strstr(out, "\r\n\r\n{\"etcdserver\":\"3.4.0\",\"etcdcluster\":\"3.4.0\"}"), "%s", out);

    get(port, "GET", "/nope", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 404"), "%s", out);
    get(port, "POST", "/metrics", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 405"), "%s", out);
    cr_assert(strstr(out, "Allow: GET"), "%s", out);
    get(port, "DELETE", "/health", out, sizeof out);
    cr_assert(strstr(out, "HTTP/1.1 405"), "%s", out);
    metrics_http_stop(m);
}

Test(metrics_http, bad_input_does_not_stop_it)
{
    struct metrics_http *m = start(0);
    int port = metrics_http_port(m, 0);
    char out[8192];

    /* garbage */
    static const char junk[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n";
    exchange(port, junk, sizeof junk - 1, out, sizeof out);
    cr_assert(!strstr(out, "x_total"));
    exchange(port, "GET\r\n\r\n", 7, out, sizeof out);
    cr_assert(!strstr(out, "x_total"));

    /* a 64 KiB header: refused (bounded), connection closed */
    size_t big = 64 * 1024;
    char *req = malloc(big + 128);
    int n = snprintf(req, 128, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 4);
    exchange(port, req, (size_t)n + big + 4, out, sizeof out);
    free(req);
    cr_assert(!strstr(out, "x_total"), "%s", out);

    /* a body on a GET beyond the body bound */
    const char *body_req = "GET /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    exchange(port, body_req, strlen(body_req), out, sizeof out);
    cr_assert(!strstr(out, "x_total"), "%s", out);

    get(port, "GET", "/metrics", out, sizeof out);
    cr_assert(strstr(out, "x_total 42"), "still serving: %s", out);
    metrics_http_stop(m);
}

Test(metrics_http, connection_bound_and_idle_timeout)
{
    struct metrics_http *m = start(4);
    int port = metrics_http_port(m, 0);
    int idle[8];
    for (int i = 0; i < 8; i++)
        idle[i] = dial(port);
    usleep(200 * 1000);
    cr_assert_leq(metrics_http_connections(m), 4, "%u", metrics_http_connections(m));
    /* Past the bound the extra connections were closed: reads on some of them see EOF. */
    int closed = 0;
    for (int i = 0; i < 8; i++) {
        char c;
        const char *r = "GET /metrics HTTP/1.1\r\n\r\n";
        (void)!send(idle[i], r, strlen(r), MSG_NOSIGNAL);
        struct pollfd p = {.fd = idle[i], .events = POLLIN};
        if (poll(&p, 1, 1000) == 1 && recv(idle[i], &c, 1, MSG_PEEK) <= 0)
            closed++;
    }
    cr_assert_geq(closed, 4, "closed %d", closed);
    /* The idle ones time out (2 s) and free their slots; then others are served. */
    for (int i = 0; i < 8; i++)
        close(idle[i]);
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = dial(port); /* idle: held open without a request */
    sleep(4);
    cr_assert_eq(metrics_http_connections(m), 0, "idle connections not timed out: %u",
                 metrics_http_connections(m));
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    char out[8192];
    get(port, "GET", "/metrics", out, sizeof out);
    cr_assert(strstr(out, "x_total 42"), "%s", out);
    metrics_http_stop(m);
}
