/* memfsm.c: see memfsm.h. */
#include "tests/node/memfsm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct memfsm {
    struct raft_fsm fsm;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t *ids, *idx;
    size_t n, cap;
    uint64_t last_index, prev_index;
    uint64_t checksum;
    size_t calls, max_batch;
    bool order_error;
    uint64_t fail_from;
    unsigned slow_apply_us; /* each apply() call takes at least this long */
    uint64_t base;      /* index of the snapshot last restored (applied_index()) */
    size_t snapshots;   /* snapshot_write calls that succeeded */
    bool snap_fail;     /* snapshot_write fails with -ENOSPC (a full disk) */
};

static int mf_apply(void *ctx, const struct raft_entry *e, size_t n, uint64_t last_index,
                    struct raft_fsm_result *res)
{
    struct memfsm *m = ctx;
    pthread_mutex_lock(&m->mu);
    if (m->slow_apply_us) { /* a slow state machine (the slowness under test, not a wait) */
        struct timespec d = {0, (long)m->slow_apply_us * 1000};
        nanosleep(&d, NULL);
    }
    if (m->fail_from && last_index >= m->fail_from) {
        pthread_mutex_unlock(&m->mu);
        return -EIO;
    }
    if (m->n + n > m->cap) {
        size_t cap = m->cap ? m->cap : 1024;
        while (cap < m->n + n)
            cap *= 2;
        uint64_t *a = realloc(m->ids, cap * sizeof(*a));
        if (a)
            m->ids = a;
        uint64_t *b = realloc(m->idx, cap * sizeof(*b));
        if (b)
            m->idx = b;
        if (!a || !b) {
            pthread_mutex_unlock(&m->mu);
            return -ENOMEM;
        }
        m->cap = cap;
    }
    m->calls++;
    if (n > m->max_batch)
        m->max_batch = n;
    for (size_t i = 0; i < n; i++) {
        uint64_t id = 0;
        if (e[i].len >= 8)
            memcpy(&id, e[i].data, 8);
        /* fsm.h: strictly increasing indexes, NORMAL only. */
        if (e[i].index <= m->prev_index || e[i].type != RAFT_ENTRY_NORMAL)
            m->order_error = true;
        m->prev_index = e[i].index;
        m->ids[m->n] = id;
        m->idx[m->n] = e[i].index;
        m->n++;
        m->checksum = (m->checksum ^ id ^ (e[i].index << 40)) * 0x100000001B3ull;
        res[i].code = 0;
        res[i].data = malloc(8);
        if (res[i].data) {
            memcpy(res[i].data, &id, 8);
            res[i].len = 8;
        }
    }
    if (last_index < e[n - 1].index)
        m->order_error = true;
    m->last_index = last_index;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static uint64_t mf_applied_index(void *ctx)
{
    struct memfsm *m = ctx;
    pthread_mutex_lock(&m->mu);
    uint64_t base = m->base; /* nothing survives a restart; a restored snapshot counts */
    pthread_mutex_unlock(&m->mu);
    return base;
}

/* Snapshot payload: "MFS1", then last_index, prev_index, checksum, n, then n (index, id)
 * pairs, all u64 in host order (tests only: never leaves the process). */
#define MF_MAGIC 0x3153464du
static int mf_snapshot_write(void *ctx, struct raft_snapshot_writer *w, uint64_t *index,
                             uint64_t *term)
{
    struct memfsm *m = ctx;
    pthread_mutex_lock(&m->mu);
    if (m->snap_fail) {
        pthread_mutex_unlock(&m->mu);
        snprintf(w->err, w->errlen, "memfsm: no space left (injected)");
        return -ENOSPC;
    }
    size_t n = m->n;
    uint64_t head[5] = {MF_MAGIC, m->last_index, m->prev_index, m->checksum, n};
    uint64_t *pairs = malloc((n ? n : 1) * 2 * sizeof(uint64_t));
    if (pairs)
        for (size_t i = 0; i < n; i++) {
            pairs[2 * i] = m->idx[i];
            pairs[2 * i + 1] = m->ids[i];
        }
    *index = m->last_index;
    *term = 0; /* the runtime knows it */
    pthread_mutex_unlock(&m->mu);
    if (!pairs)
        return -ENOMEM;
    int rc = w->write(w->arg, head, sizeof head);
    if (rc == 0 && n)
        rc = w->write(w->arg, pairs, n * 2 * sizeof(uint64_t));
    free(pairs);
    if (rc == 0) {
        pthread_mutex_lock(&m->mu);
        m->snapshots++;
        pthread_mutex_unlock(&m->mu);
    }
    return rc;
}

static int read_full(struct raft_snapshot_reader *r, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        long k = r->read(r->arg, (uint8_t *)buf + got, len - got);
        if (k <= 0)
            return k < 0 ? (int)k : -EBADMSG;
        got += (size_t)k;
    }
    return 0;
}

static int mf_snapshot_restore(void *ctx, struct raft_snapshot_reader *r, uint64_t index,
                               uint64_t term)
{
    struct memfsm *m = ctx;
    (void)term;
    uint64_t head[5];
    int rc = read_full(r, head, sizeof head);
    if (rc)
        return rc;
    if (head[0] != MF_MAGIC || head[1] != index || head[4] > (1u << 24))
        return -EBADMSG;
    size_t n = (size_t)head[4];
    uint64_t *pairs = malloc((n ? n : 1) * 2 * sizeof(uint64_t));
    uint64_t *ids = malloc((n ? n : 1) * sizeof(uint64_t));
    uint64_t *idx = malloc((n ? n : 1) * sizeof(uint64_t));
    char extra;
    if (!pairs || !ids || !idx)
        rc = -ENOMEM;
    else if ((rc = read_full(r, pairs, n * 2 * sizeof(uint64_t))) == 0 &&
             r->read(r->arg, &extra, 1) != 0)
        rc = -EBADMSG; /* longer than it says */
    if (rc) {
        free(pairs);
        free(ids);
        free(idx);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        idx[i] = pairs[2 * i];
        ids[i] = pairs[2 * i + 1];
    }
    free(pairs);
    pthread_mutex_lock(&m->mu);
    free(m->ids);
    free(m->idx);
    m->ids = ids;
    m->idx = idx;
    m->n = m->cap = n ? n : 1;
    m->n = n;
    m->last_index = head[1];
    m->prev_index = head[2];
    m->checksum = head[3];
    m->base = index;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

void memfsm_fail_snapshots(struct memfsm *m, bool on)
{
    pthread_mutex_lock(&m->mu);
    m->snap_fail = on;
    pthread_mutex_unlock(&m->mu);
}

size_t memfsm_snapshots(struct memfsm *m)
{
    pthread_mutex_lock(&m->mu);
    size_t k = m->snapshots;
    pthread_mutex_unlock(&m->mu);
    return k;
}

struct memfsm *memfsm_new(void)
{
    struct memfsm *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &a);
    pthread_condattr_destroy(&a);
    m->fsm.ctx = m;
    m->fsm.apply = mf_apply;
    m->fsm.applied_index = mf_applied_index;
    m->fsm.snapshot_write = mf_snapshot_write;
    m->fsm.snapshot_restore = mf_snapshot_restore;
    return m;
}

void memfsm_free(struct memfsm *m)
{
    if (!m)
        return;
    free(m->ids);
    free(m->idx);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

struct raft_fsm *memfsm_fsm(struct memfsm *m)
{
    return &m->fsm;
}

static bool wait_until(struct memfsm *m, size_t count, uint64_t index, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    while ((m->n < count || m->last_index < index) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&m->cv, &m->mu, &dl);
    bool ok = m->n >= count && m->last_index >= index;
    pthread_mutex_unlock(&m->mu);
    return ok;
}

bool memfsm_wait_count(struct memfsm *m, size_t count, int timeout_ms)
{
    return wait_until(m, count, 0, timeout_ms);
}

bool memfsm_wait_index(struct memfsm *m, uint64_t index, int timeout_ms)
{
    return wait_until(m, 0, index, timeout_ms);
}

size_t memfsm_count(struct memfsm *m)
{
    pthread_mutex_lock(&m->mu);
    size_t n = m->n;
    pthread_mutex_unlock(&m->mu);
    return n;
}

uint64_t memfsm_last_index(struct memfsm *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t v = m->last_index;
    pthread_mutex_unlock(&m->mu);
    return v;
}

uint64_t memfsm_checksum(struct memfsm *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t v = m->order_error ? 0 : m->checksum;
    pthread_mutex_unlock(&m->mu);
    return v;
}

uint64_t *memfsm_ids(struct memfsm *m, size_t *n, uint64_t **idx)
{
    pthread_mutex_lock(&m->mu);
    *n = m->n;
    uint64_t *a = malloc((m->n ? m->n : 1) * sizeof(*a));
    if (a && m->n)
        memcpy(a, m->ids, m->n * sizeof(*a));
    if (idx) {
        *idx = malloc((m->n ? m->n : 1) * sizeof(**idx));
        if (*idx && m->n)
            memcpy(*idx, m->idx, m->n * sizeof(**idx));
    }
    pthread_mutex_unlock(&m->mu);
    return a;
}

void memfsm_batches(struct memfsm *m, size_t *calls, size_t *max_batch)
{
    pthread_mutex_lock(&m->mu);
    *calls = m->calls;
    *max_batch = m->max_batch;
    pthread_mutex_unlock(&m->mu);
}

void memfsm_fail_from(struct memfsm *m, uint64_t index)
{
    pthread_mutex_lock(&m->mu);
    m->fail_from = index;
    pthread_mutex_unlock(&m->mu);
}

void memfsm_slow_apply(struct memfsm *m, unsigned us)
{
    pthread_mutex_lock(&m->mu);
    m->slow_apply_us = us;
    pthread_mutex_unlock(&m->mu);
}

void memfsm_payload(uint8_t *buf, size_t len, uint64_t id)
{
    memset(buf, (int)(id & 0xff), len);
    memcpy(buf, &id, 8);
}
