/* wanproxy: a user-space TCP proxy that puts WAN latency, jitter, loss and a rate between the sites
 * of a cluster on one machine (issue 19; docs/multi-dc.md "The WAN harness").
 *
 * What it promises:
 * - Sites are loopback CIDRs (--site a=127.0.1.0/24); a link is an ordered pair of sites. TCP from
 *   one site to another is sent here by iptables nat OUTPUT DNAT rules (--print-iptables CHAIN
 *   prints them; the caller owns the chain and removes it, tests/wan/wan.sh). The original
 *   destination comes from SO_ORIGINAL_DST, the source site from the peer address.
 * - A site may also own uids (--owner a=40001-40002): TCP that a process of such a uid opens to
 *   another site is sent, by an iptables owner match, to a listener of that site's own, and takes
 *   its source site from the listener that accepted it. So programs that dial from 127.0.0.1
 *   (craftd, etcd: the kernel picks the source) are placed in a site by running each under its
 *   own uid; the address rules stay for programs that bind their site address.
 * - Each direction of a link delays bytes by half the link's RTT (--rtt a,b=30ms), drawn per chunk
 *   uniformly within +-J of it (--jitter 20%), never reordering a stream: a chunk is never
 *   deliverable before the one read before it. Traffic inside one site is never sent here.
 * - A rate (--rate a,b=10MB/s) paces each direction of a link, shared by all its connections: a
 *   chunk of n bytes occupies the link for n/rate after the previous one.
 * - Loss on a byte stream is modelled as TCP would see it: with probability p (--loss a,b=1%) a
 *   chunk is held one retransmission timeout longer (--loss-delay, 200 ms, Linux's minimum RTO),
 *   and so is everything behind it. Bytes are never dropped or corrupted.
 * - Bounds: at most --buffer bytes (4 MiB) queued per direction of a connection (reading stops
 *   until they drain, so TCP's flow control reaches the sender) and --max-conns connections (1024;
 *   more are closed on accept). One thread: epoll, a timerfd for the earliest due chunk.
 * - Outgoing connections are made from the listen address, which no site may contain, and as the
 *   proxy's own uid, which no site may own, so they are not redirected again. Bad flags: a
 *   message naming the flag on stderr, exit status 2.
 * - --rules CHAIN: once listening, the proxy prints its iptables rules for CHAIN on stdout, one
 *   "wanproxy: rule ..." line each (owner rules first), before the "listening on" line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif

#define MAX_SITES 16
#define CHUNK_MAX 65536

struct site {
    char name[32];
    uint32_t net, mask; /* host order */
    uint32_t uid_lo, uid_hi; /* --owner range; uid_hi == 0: none */
    int lfd;                 /* its own listener when it owns uids, else -1 */
    uint16_t lport;
};

struct link {
    int64_t delay_ns; /* one way: half the RTT */
    double loss;
    double rate; /* bytes/s; 0 = unlimited */
    int64_t free_at; /* when the link has sent everything paced so far */
};

struct chunk {
    struct chunk *next;
    int64_t due;
    uint32_t len, off;
    unsigned char data[];
};

struct conn;
struct end {
    struct conn *c;
    int i; /* which fd of c */
};

/* d[i] reads fd[i] and writes fd[1-i]; fd[0] is the accepted client, fd[1] the real destination. */
struct dir {
    struct chunk *head, *tail;
    size_t queued;
    int64_t last_due;
    struct link *link;
    bool eof, shut, blocked; /* blocked: the last write would block */
};

struct conn {
    int fd[2];
    bool connected, dead;
    struct dir d[2];
    struct end end[2];
    struct conn *prev, *next;
};

static struct site sites[MAX_SITES];
static int nsites;
static struct link links[MAX_SITES][MAX_SITES];
static double jitter;
static int64_t loss_delay_ns = 200000000;
static size_t buf_max = 4u << 20;
static int max_conns = 1024;
static struct sockaddr_in listen_addr;
static uint64_t rng = 0x9e3779b97f4a7c15u;
static int epfd, tfd;
static struct conn *conns, *graveyard; /* closed ones are freed after the epoll batch */
static int nconns;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double rnd01(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 53);
}

/* ---- configuration ---- */

static void usage_die(const char *flag, const char *val, const char *why)
{
    fprintf(stderr, "wanproxy: %s %s: %s\n", flag, val ? val : "", why);
    exit(2);
}

static int site_find(const char *name, size_t len)
{
    for (int i = 0; i < nsites; i++)
        if (strlen(sites[i].name) == len && memcmp(sites[i].name, name, len) == 0)
            return i;
    return -1;
}

static int site_of(uint32_t addr)
{
    for (int i = 0; i < nsites; i++)
        if ((addr & sites[i].mask) == sites[i].net)
            return i;
    return -1;
}

/* "a=UID" or "a=LO-HI": the uids whose connections to other sites come from site a. */
static void parse_owner(const char *v)
{
    const char *eq = strchr(v, '=');
    int s = eq ? site_find(v, (size_t)(eq - v)) : -1;
    if (!eq)
        usage_die("--owner", v, "want SITE=UID or SITE=UID-UID");
    if (s < 0)
        usage_die("--owner", v, "unknown site (give --site first)");
    if (sites[s].uid_hi)
        usage_die("--owner", v, "site given two owner ranges");
    char *end;
    long lo = strtol(eq + 1, &end, 10), hi = lo;
    if (*end == '-')
        hi = strtol(end + 1, &end, 10);
    if (end == eq + 1 || *end || lo < 1 || hi < lo || hi > 0x7fffffffL)
        usage_die("--owner", v, "want SITE=UID or SITE=UID-UID, uids 1..2^31-1");
    uid_t me = getuid();
    if ((long)me >= lo && (long)me <= hi)
        usage_die("--owner", v, "the proxy's own uid cannot be in a site");
    for (int i = 0; i < nsites; i++)
        if (sites[i].uid_hi && lo <= (long)sites[i].uid_hi && hi >= (long)sites[i].uid_lo)
            usage_die("--owner", v, "overlaps another site's uids");
    sites[s].uid_lo = (uint32_t)lo;
    sites[s].uid_hi = (uint32_t)hi;
}

static void parse_site(const char *v)
{
    const char *eq = strchr(v, '=');
    if (!eq || eq == v || (size_t)(eq - v) >= sizeof sites[0].name)
        usage_die("--site", v, "want NAME=A.B.C.D/LEN");
    if (nsites == MAX_SITES)
        usage_die("--site", v, "too many sites (16)");
    if (site_find(v, (size_t)(eq - v)) >= 0)
        usage_die("--site", v, "site named twice");
    char ip[32];
    const char *slash = strchr(eq + 1, '/');
    if (!slash || (size_t)(slash - eq - 1) >= sizeof ip)
        usage_die("--site", v, "want NAME=A.B.C.D/LEN");
    memcpy(ip, eq + 1, (size_t)(slash - eq - 1));
    ip[slash - eq - 1] = 0;
    struct in_addr a;
    char *end;
    long len = strtol(slash + 1, &end, 10);
    if (inet_pton(AF_INET, ip, &a) != 1 || *end || end == slash + 1 || len < 8 || len > 32)
        usage_die("--site", v, "want NAME=A.B.C.D/LEN with LEN 8..32");
    uint32_t mask = len == 32 ? 0xffffffffu : ~(0xffffffffu >> len);
    uint32_t net = ntohl(a.s_addr);
    if ((net >> 24) != 127)
        usage_die("--site", v, "sites must be loopback addresses (127.0.0.0/8)");
    if (net & ~mask)
        usage_die("--site", v, "host bits set in the network");
    for (int i = 0; i < nsites; i++)
        if ((net & sites[i].mask) == sites[i].net || (sites[i].net & mask) == net)
            usage_die("--site", v, "overlaps another site");
    struct site *s = &sites[nsites++];
    memcpy(s->name, v, (size_t)(eq - v));
    s->name[eq - v] = 0;
    s->net = net;
    s->mask = mask;
    s->lfd = -1;
}

/* "a,b=VALUE": the two sites and the value. */
static void parse_pair(const char *flag, const char *v, int *a, int *b, const char **val)
{
    const char *comma = strchr(v, ','), *eq = strchr(v, '=');
    if (!comma || !eq || comma > eq)
        usage_die(flag, v, "want SITE,SITE=VALUE");
    *a = site_find(v, (size_t)(comma - v));
    *b = site_find(comma + 1, (size_t)(eq - comma - 1));
    if (*a < 0 || *b < 0)
        usage_die(flag, v, "unknown site (give --site first)");
    if (*a == *b)
        usage_die(flag, v, "a link joins two different sites");
    *val = eq + 1;
}

static int64_t parse_duration(const char *flag, const char *v)
{
    char *end;
    double x = strtod(v, &end);
    double mul = strcmp(end, "ms") == 0 ? 1e6 : strcmp(end, "s") == 0 ? 1e9 : strcmp(end, "us") == 0 ? 1e3 : -1;
    if (end == v || mul < 0 || !(x >= 0) || x * mul > 600e9)
        usage_die(flag, v, "want a duration like 30ms, 1.5s or 500us (at most 600s)");
    return (int64_t)(x * mul);
}

static double parse_percent(const char *flag, const char *v, double max)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || strcmp(end, "%") != 0 || !(x >= 0) || x > max)
        usage_die(flag, v, max == 100 ? "want a percentage 0%..100%" : "want a percentage 0%..99%");
    return x / 100;
}

static double parse_rate(const char *flag, const char *v)
{
    static const struct { const char *s; double m; } units[] = {
        {"B/s", 1}, {"KB/s", 1e3}, {"MB/s", 1e6}, {"GB/s", 1e9},
        {"KiB/s", 1024.0}, {"MiB/s", 1048576.0}, {"GiB/s", 1073741824.0},
    };
    char *end;
    double x = strtod(v, &end);
    for (size_t i = 0; end != v && x > 0 && i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].s) == 0)
            return x * units[i].m;
    usage_die(flag, v, "want a positive rate like 10MB/s, 512KiB/s or 1GB/s");
    return 0;
}

static long parse_num(const char *flag, const char *v, long min, long max)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < min || x > max)
        usage_die(flag, v, "want a whole number in range");
    return x;
}

static void parse_listen(const char *v)
{
    char ip[32];
    const char *colon = strrchr(v, ':');
    if (!colon || (size_t)(colon - v) >= sizeof ip)
        usage_die("--listen", v, "want A.B.C.D:PORT");
    memcpy(ip, v, (size_t)(colon - v));
    ip[colon - v] = 0;
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_port = htons((uint16_t)parse_num("--listen", colon + 1, 0, 65535));
    if (inet_pton(AF_INET, ip, &listen_addr.sin_addr) != 1)
        usage_die("--listen", v, "want A.B.C.D:PORT");
}

/* ---- the proxy ---- */

static void conn_close(struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        close(c->fd[i]);
        for (struct chunk *k = c->d[i].head, *n; k; k = n) {
            n = k->next;
            free(k);
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->dead = true;
    c->next = graveyard;
    graveyard = c;
    nconns--;
}

/* Reads what fd[i] has into d[i]'s queue, each chunk stamped with the time it becomes deliverable.
 * Returns -1 when the connection is to be closed. */
static int conn_read(struct conn *c, int i)
{
    struct dir *d = &c->d[i];
    while (!d->eof && d->queued < buf_max) {
        size_t want = buf_max - d->queued < CHUNK_MAX ? buf_max - d->queued : CHUNK_MAX;
        struct chunk *k = malloc(sizeof *k + want);
        if (!k)
            return -1;
        ssize_t n = read(c->fd[i], k->data, want);
        if (n <= 0) {
            free(k);
            if (n == 0) {
                d->eof = true;
                break;
            }
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -1;
        }
        if ((size_t)n < want) { /* small messages must not each hold a 64 KiB block */
            struct chunk *fit = realloc(k, sizeof *k + (size_t)n);
            if (fit)
                k = fit;
        }
        int64_t now = now_ns(), sent = now;
        struct link *l = d->link;
        if (l->rate > 0) {
            int64_t start = l->free_at > now ? l->free_at : now;
            l->free_at = start + (int64_t)((double)n * 1e9 / l->rate);
            sent = l->free_at;
        }
        int64_t delay = l->delay_ns;
        if (jitter > 0)
            delay += (int64_t)((double)l->delay_ns * jitter * (2 * rnd01() - 1));
        if (l->loss > 0 && rnd01() < l->loss)
            delay += loss_delay_ns;
        k->due = sent + delay;
        if (k->due < d->last_due) /* never before the bytes read earlier */
            k->due = d->last_due;
        d->last_due = k->due;
        k->len = (uint32_t)n;
        k->off = 0;
        k->next = NULL;
        if (d->tail)
            d->tail->next = k;
        else
            d->head = k;
        d->tail = k;
        d->queued += (size_t)n;
    }
    return 0;
}

/* Writes d[i]'s due chunks to fd[1-i]; passes on an end of stream once the queue is empty. */
static int conn_flush(struct conn *c, int i, int64_t now)
{
    struct dir *d = &c->d[i];
    int out = c->fd[1 - i];
    if (i == 0 && !c->connected)
        return 0;
    d->blocked = false;
    while (d->head && d->head->due <= now) {
        struct chunk *k = d->head;
        ssize_t n = write(out, k->data + k->off, k->len - k->off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                d->blocked = true;
                return 0;
            }
            return -1;
        }
        k->off += (uint32_t)n;
        d->queued -= (size_t)n;
        if (k->off < k->len)
            continue;
        d->head = k->next;
        if (!d->head)
            d->tail = NULL;
        free(k);
    }
    if (!d->head && d->eof && !d->shut) {
        shutdown(out, SHUT_WR);
        d->shut = true;
    }
    return 0;
}

/* Accepts on lfd; connections on a site's own listener (--owner) come from that site. */
static void conn_accept(int lfd, int from_site)
{
    for (;;) {
        struct sockaddr_in peer, dst;
        socklen_t plen = sizeof peer, dlen = sizeof dst;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int src_site = from_site >= 0 ? from_site : site_of(ntohl(peer.sin_addr.s_addr)), dst_site = -1;
        if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &dlen) == 0)
            dst_site = site_of(ntohl(dst.sin_addr.s_addr));
        if (src_site < 0 || dst_site < 0 || src_site == dst_site || nconns >= max_conns) {
            if (nconns >= max_conns)
                fprintf(stderr, "wanproxy: %d connections open (--max-conns): closing a new one\n", nconns);
            else
                fprintf(stderr, "wanproxy: a connection not between two sites: closed\n");
            close(fd);
            continue;
        }
        int ofd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in from = listen_addr;
        from.sin_port = 0;
        if (ofd < 0 || bind(ofd, (struct sockaddr *)&from, sizeof from) != 0 ||
            (connect(ofd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS)) {
            if (ofd >= 0)
                close(ofd);
            close(fd);
            continue;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            close(ofd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(ofd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd[0] = fd;
        c->fd[1] = ofd;
        c->d[0].link = &links[src_site][dst_site];
        c->d[1].link = &links[dst_site][src_site];
        for (int i = 0; i < 2; i++) {
            c->end[i] = (struct end){c, i};
            /* Edge-triggered: every step tries to read and write both sides until EAGAIN, so
             * no interest is ever changed and a hang-up cannot spin the loop. */
            struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->end[i]};
            epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd[i], &e);
        }
        c->next = conns;
        if (conns)
            conns->prev = c;
        conns = c;
        nconns++;
    }
}

/* One step for a connection after an event or a timer: read what can be queued, deliver what is
 * due, and close once both directions have ended or on any error. */
static void conn_step(struct conn *c, int i, uint32_t ev)
{
    if (i == 1 && !c->connected && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_close(c);
            return;
        }
        c->connected = true;
    }
    /* Twice: a read that stopped at --buffer gets no new edge, so once delivering has made room,
     * read again now; the second delivery passes on an end of stream read by the second read. */
    for (int pass = 0; pass < 2; pass++) {
        if (conn_read(c, 0) < 0 || (c->connected && conn_read(c, 1) < 0)) {
            conn_close(c);
            return;
        }
        int64_t now = now_ns();
        if (conn_flush(c, 0, now) < 0 || conn_flush(c, 1, now) < 0) {
            conn_close(c);
            return;
        }
    }
    if (c->d[0].shut && c->d[1].shut)
        conn_close(c);
}

/* The site whose own listener p (an epoll tag) is, or -1. */
static int site_listener(const void *p)
{
    for (int i = 0; i < nsites; i++)
        if (p == &sites[i])
            return i;
    return -1;
}

static void arm_timer(void)
{
    int64_t next = INT64_MAX;
    for (struct conn *c = conns; c; c = c->next)
        for (int i = 0; i < 2; i++)
            if (c->d[i].head && !c->d[i].blocked && c->d[i].head->due < next)
                next = c->d[i].head->due;
    struct itimerspec its = {0};
    if (next != INT64_MAX) {
        if (next < 1)
            next = 1;
        its.it_value.tv_sec = next / 1000000000;
        its.it_value.tv_nsec = next % 1000000000;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* The DNAT rules for CHAIN, each line prefixed by `prefix`: owner rules (a site's uids to another
 * site, to that site's listener) first, then address rules (site to site, to the main listener). */
static void print_iptables(const char *chain, const char *prefix)
{
    char port[8];
    snprintf(port, sizeof port, "%u", ntohs(listen_addr.sin_port));
    char to[32];
    inet_ntop(AF_INET, &listen_addr.sin_addr, to, sizeof to);
    for (int a = 0; a < nsites; a++)
        for (int b = 0; b < nsites && sites[a].uid_hi; b++) {
            if (a == b)
                continue;
            struct in_addr sb = {htonl(sites[b].net)};
            char nb[32];
            inet_ntop(AF_INET, &sb, nb, sizeof nb);
            printf("%s-t nat -A %s -p tcp -m owner --uid-owner %" PRIu32 "-%" PRIu32
                   " -d %s/%d -j DNAT --to-destination %s:%u\n",
                   prefix, chain, sites[a].uid_lo, sites[a].uid_hi, nb, __builtin_popcount(sites[b].mask), to,
                   sites[a].lport);
        }
    for (int a = 0; a < nsites; a++)
        for (int b = 0; b < nsites; b++) {
            if (a == b)
                continue;
            struct in_addr sa = {htonl(sites[a].net)}, sb = {htonl(sites[b].net)};
            char na[32], nb[32];
            inet_ntop(AF_INET, &sa, na, sizeof na);
            inet_ntop(AF_INET, &sb, nb, sizeof nb);
            printf("%s-t nat -A %s -p tcp -s %s/%d -d %s/%d -j DNAT --to-destination %s:%s\n", prefix, chain, na,
                   __builtin_popcount(sites[a].mask), nb, __builtin_popcount(sites[b].mask), to, port);
        }
}

int main(int argc, char **argv)
{
    const char *chain = NULL, *rules = NULL;
    bool have_listen = false;
    uint64_t seed = (uint64_t)now_ns();
    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0) {
            printf("usage: wanproxy --listen 127.0.0.1:PORT --site NAME=CIDR... [--rtt A,B=30ms] [--jitter 20%%]\n"
                   "  [--loss A,B=1%%] [--loss-delay 200ms] [--rate A,B=10MB/s] [--buffer BYTES] [--max-conns N]\n"
                   "  [--seed N] [--owner SITE=UID[-UID]] [--rules CHAIN] [--print-iptables CHAIN]\n");
            return 0;
        }
        if (i + 1 >= argc)
            usage_die(f, NULL, strncmp(f, "--", 2) == 0 ? "needs a value" : "unknown argument");
        const char *v = argv[++i], *val;
        int a, b;
        if (strcmp(f, "--listen") == 0) {
            parse_listen(v);
            have_listen = true;
        } else if (strcmp(f, "--site") == 0) {
            parse_site(v);
        } else if (strcmp(f, "--rtt") == 0) {
            parse_pair(f, v, &a, &b, &val);
            links[a][b].delay_ns = links[b][a].delay_ns = parse_duration(f, val) / 2;
        } else if (strcmp(f, "--rate") == 0) {
            parse_pair(f, v, &a, &b, &val);
            links[a][b].rate = links[b][a].rate = parse_rate(f, val);
        } else if (strcmp(f, "--loss") == 0) {
            parse_pair(f, v, &a, &b, &val);
            links[a][b].loss = links[b][a].loss = parse_percent(f, val, 100);
        } else if (strcmp(f, "--jitter") == 0) {
            jitter = parse_percent(f, v, 99);
        } else if (strcmp(f, "--loss-delay") == 0) {
            loss_delay_ns = parse_duration(f, v);
        } else if (strcmp(f, "--buffer") == 0) {
            buf_max = (size_t)parse_num(f, v, 4096, 1L << 30);
        } else if (strcmp(f, "--max-conns") == 0) {
            max_conns = (int)parse_num(f, v, 1, 100000);
        } else if (strcmp(f, "--seed") == 0) {
            seed = (uint64_t)parse_num(f, v, 0, INT64_MAX);
        } else if (strcmp(f, "--print-iptables") == 0) {
            chain = v;
        } else if (strcmp(f, "--owner") == 0) {
            parse_owner(v);
        } else if (strcmp(f, "--rules") == 0) {
            rules = v;
        } else {
            usage_die(f, NULL, "unknown flag (--help lists them)");
        }
    }
    if (!have_listen)
        usage_die("--listen", NULL, "is required");
    if (nsites < 2)
        usage_die("--site", NULL, "give at least two sites");
    if (site_of(ntohl(listen_addr.sin_addr.s_addr)) >= 0)
        usage_die("--listen", NULL, "the listen address must be outside every site");
    rng = seed ? seed : 1;
    if (chain) {
        for (int i = 0; i < nsites; i++)
            if (sites[i].uid_hi)
                usage_die("--print-iptables", chain, "cannot know the --owner listeners' ports: use --rules");
        if (listen_addr.sin_port == 0)
            usage_die("--listen", NULL, "--print-iptables needs the real port");
        print_iptables(chain, "");
        return 0;
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t alen = sizeof listen_addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0 || listen(lfd, 512) != 0 ||
        getsockname(lfd, (struct sockaddr *)&listen_addr, &alen) != 0) {
        fprintf(stderr, "wanproxy: listen: %s\n", strerror(errno));
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = &lfd}, te = {.events = EPOLLIN, .data.ptr = &tfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &le);
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &te);
    for (int i = 0; i < nsites; i++) {
        if (!sites[i].uid_hi)
            continue;
        struct sockaddr_in a = listen_addr;
        socklen_t sl = sizeof a;
        a.sin_port = 0;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 512) != 0 ||
            getsockname(fd, (struct sockaddr *)&a, &sl) != 0) {
            fprintf(stderr, "wanproxy: listen for site %s: %s\n", sites[i].name, strerror(errno));
            return 1;
        }
        sites[i].lfd = fd;
        sites[i].lport = ntohs(a.sin_port);
        struct epoll_event se = {.events = EPOLLIN, .data.ptr = &sites[i]};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &se);
    }
    if (rules)
        print_iptables(rules, "wanproxy: rule ");
    char ip[32];
    inet_ntop(AF_INET, &listen_addr.sin_addr, ip, sizeof ip);
    printf("wanproxy: listening on %s:%u, %d sites, seed %" PRIu64 "\n", ip, ntohs(listen_addr.sin_port), nsites,
           seed);
    fflush(stdout);

    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(epfd, evs, 64, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        bool timer = false;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr == &lfd) {
                conn_accept(lfd, -1);
            } else if (site_listener(evs[k].data.ptr) >= 0) {
                int si = site_listener(evs[k].data.ptr);
                conn_accept(sites[si].lfd, si);
            } else if (evs[k].data.ptr == &tfd) {
                uint64_t x;
                ssize_t r = read(tfd, &x, sizeof x);
                (void)r;
                timer = true;
            } else {
                struct end *e = evs[k].data.ptr;
                if (!e->c->dead) /* an earlier event in this batch may have closed it */
                    conn_step(e->c, e->i, evs[k].events);
            }
        }
        if (timer)
            for (struct conn *c = conns, *next; c; c = next) {
                next = c->next;
                conn_step(c, 0, 0);
            }
        while (graveyard) {
            struct conn *c = graveyard;
            graveyard = c->next;
            free(c);
        }
        arm_timer();
    }
}
