/* wanprobe: measures one link through wanproxy for tests/wan/wan_test.sh. It serves on TO (port 0,
 * a thread of its own) and connects to it from FROM, so iptables sends the connection through the
 * proxy when FROM and TO are in different sites. Prints key=value lines; exits 1 on any error.
 *
 *   wanprobe rtt FROM TO SAMPLES   64-byte echoes one at a time: min_ms p50_ms max_ms
 *   wanprobe stream FROM TO BYTES  a patterned stream echoed back while being sent; every byte is
 *                                  checked in order: bytes=N ok, or the first wrong offset
 *   wanprobe conns FROM TO N       N connections held open at once, each echoing 1 byte:
 *                                  echoed=K closed=N-K
 *   wanprobe rate FROM TO BYTES    BYTES one way, the server answers its count at the end:
 *                                  bytes, secs, rate (bytes/s)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *mode;
static int lfd;

static void die(const char *what)
{
    fprintf(stderr, "wanprobe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char pattern(uint64_t off)
{
    uint64_t x = off * 0x9e3779b97f4a7c15u;
    return (unsigned char)(x >> 56);
}

static void write_all(int fd, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0)
            die("write");
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

/* conns mode: echo one byte on each of many connections, until the listener is shut. */
static void *serve_conns(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        char b;
        if (read(fd, &b, 1) == 1)
            write_all(fd, &b, 1);
        /* left open: the client closes it */
    }
}

static void *serve(void *arg)
{
    (void)arg;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static char buf[65536];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0)
            die("server read");
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (strcmp(mode, "rate") != 0)
            write_all(fd, buf, (size_t)n);
    }
    if (strcmp(mode, "rate") == 0)
        write_all(fd, &total, sizeof total);
    close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: wanprobe rtt|stream|rate FROM TO N\n");
        return 2;
    }
    mode = argv[1];
    signal(SIGPIPE, SIG_IGN);
    long long n = atoll(argv[4]);
    struct sockaddr_in to = {.sin_family = AF_INET}, from = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[2], &from.sin_addr) != 1 || inet_pton(AF_INET, argv[3], &to.sin_addr) != 1 ||
        n <= 0) {
        fprintf(stderr, "wanprobe: bad address or count\n");
        return 2;
    }
    socklen_t len = sizeof to;
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&to, sizeof to) != 0 || listen(lfd, 4) != 0 ||
        getsockname(lfd, (struct sockaddr *)&to, &len) != 0)
        die("listen");
    pthread_t th;
    pthread_create(&th, NULL, strcmp(mode, "conns") == 0 ? serve_conns : serve, NULL);
    if (strcmp(mode, "conns") == 0) {
        int fds[256], echoed = 0;
        if (n > 256)
            n = 256;
        for (long long i = 0; i < n; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM, 0);
            if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&from, sizeof from) != 0 ||
                connect(fds[i], (struct sockaddr *)&to, sizeof to) != 0)
                die("conns connect");
        }
        /* after all are open, so the ones over the proxy's bound are the ones it closed */
        for (long long i = 0; i < n; i++) {
            char b = 'c';
            if (write(fds[i], &b, 1) == 1 && read(fds[i], &b, 1) == 1 && b == 'c')
                echoed++;
        }
        printf("echoed=%d closed=%lld\n", echoed, n - echoed);
        shutdown(lfd, SHUT_RDWR);
        pthread_join(th, NULL);
        return 0;
    }

    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof from) != 0)
        die("bind FROM");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0)
        die("connect");

    if (strcmp(mode, "rtt") == 0) {
        double *s = calloc((size_t)n, sizeof *s);
        char msg[64], back[64];
        memset(msg, 'x', sizeof msg);
        for (long long i = 0; i < n; i++) {
            double t0 = now_s();
            write_all(fd, msg, sizeof msg);
            for (size_t got = 0; got < sizeof back;) {
                ssize_t r = read(fd, back + got, sizeof back - got);
                if (r <= 0)
                    die("rtt read (closed early?)");
                got += (size_t)r;
            }
            s[i] = (now_s() - t0) * 1e3;
            if (getenv("WANPROBE_VERBOSE"))
                fprintf(stderr, "sample %lld: %.3f ms\n", i, s[i]);
        }
        qsort(s, (size_t)n, sizeof *s, cmp);
        printf("samples=%lld min_ms=%.3f p50_ms=%.3f p90_ms=%.3f max_ms=%.3f\n", n, s[0], s[n / 2], s[n * 9 / 10],
               s[n - 1]);
        free(s);
    } else if (strcmp(mode, "stream") == 0) {
        static unsigned char buf[65536];
        uint64_t sent = 0, got = 0, total = (uint64_t)n;
        struct pollfd p = {.fd = fd};
        while (got < total) {
            p.events = POLLIN | (sent < total ? POLLOUT : 0);
            if (poll(&p, 1, 10000) <= 0) {
                fprintf(stderr, "wanprobe: stream stalled at %llu of %llu bytes back\n", (unsigned long long)got,
                        (unsigned long long)total);
                return 1;
            }
            if ((p.revents & POLLOUT) && sent < total) {
                size_t k = total - sent < 16384 ? (size_t)(total - sent) : 16384;
                for (size_t j = 0; j < k; j++)
                    buf[j] = pattern(sent + j);
                ssize_t w = send(fd, buf, k, MSG_DONTWAIT);
                if (w > 0)
                    sent += (uint64_t)w;
                if (sent == total)
                    shutdown(fd, SHUT_WR);
            }
            if (p.revents & (POLLIN | POLLHUP)) {
                ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (r == 0) {
                    fprintf(stderr, "wanprobe: stream ended at %llu of %llu bytes\n", (unsigned long long)got,
                            (unsigned long long)total);
                    return 1;
                }
                for (ssize_t j = 0; j < r; j++)
                    if (buf[j] != pattern(got + (uint64_t)j)) {
                        fprintf(stderr, "wanprobe: stream byte %llu wrong (out of order or corrupt)\n",
                                (unsigned long long)(got + (uint64_t)j));
                        return 1;
                    }
                if (r > 0)
                    got += (uint64_t)r;
            }
        }
        printf("bytes=%llu ok\n", (unsigned long long)got);
    } else if (strcmp(mode, "rate") == 0) {
        static unsigned char buf[65536];
        memset(buf, 'r', sizeof buf);
        double t0 = now_s();
        for (long long left = n; left > 0;) {
            size_t k = left < (long long)sizeof buf ? (size_t)left : sizeof buf;
            write_all(fd, buf, k);
            left -= (long long)k;
        }
        shutdown(fd, SHUT_WR);
        uint64_t count = 0;
        size_t have = 0;
        while (have < sizeof count) {
            ssize_t r = read(fd, (char *)&count + have, sizeof count - have);
            if (r <= 0)
                die("rate read (closed early?)");
            have += (size_t)r;
        }
        double secs = now_s() - t0;
        if (count != (uint64_t)n) {
            fprintf(stderr, "wanprobe: the server counted %llu of %lld bytes\n", (unsigned long long)count, n);
            return 1;
        }
        printf("bytes=%lld secs=%.3f rate=%.0f\n", n, secs, (double)n / secs);
    } else {
        fprintf(stderr, "wanprobe: unknown mode %s\n", mode);
        return 2;
    }
    close(fd);
    pthread_join(th, NULL);
    return 0;
}
