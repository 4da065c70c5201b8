/* autocompact.c: etcd's automatic history compaction (see autocompact.h). */
#include "services/autocompact.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "services/kvstore/kv_cmd.h"

/* ---- the scheduler ---- */

void ac_sched_init(struct ac_sched *a, int mode, uint64_t retention, uint64_t revision_interval_ms,
                   uint64_t now_ms)
{
    memset(a, 0, sizeof *a);
    a->mode = mode;
    a->retention = retention;
    if (mode == AC_REVISION) {
        a->interval_ms = revision_interval_ms ? revision_interval_ms : AC_REVISION_INTERVAL_MS;
        return;
    }
    /* etcd samples every tenth of min(P, 1 h) and keeps P / that + 1 samples; a retention so
     * long that this would pass AC_MAX_SAMPLES samples less often instead (bounded memory). */
    uint64_t base = retention < AC_HOUR_MS ? retention : AC_HOUR_MS;
    uint64_t every = base / 10 ? base / 10 : 1;
    if (retention / every + 1 > AC_MAX_SAMPLES)
        every = (retention + AC_MAX_SAMPLES - 2) / (AC_MAX_SAMPLES - 1);
    a->interval_ms = every;
    a->keep = (size_t)(retention / every + 1);
    if (a->keep > AC_MAX_SAMPLES)
        a->keep = AC_MAX_SAMPLES;
    a->last_ms = now_ms;
    a->wait_ms = retention; /* the first compaction once a whole retention has passed */
}

int64_t ac_sched_tick(struct ac_sched *a, uint64_t now_ms, int64_t rev, bool leader)
{
    if (a->retention == 0)
        return 0;
    if (a->mode == AC_REVISION) {
        int64_t r = rev - (int64_t)a->retention;
        return leader && r > 0 && r != a->last_rev ? r : 0;
    }
    /* Every member samples, leader or not, so a new leader has the window at once. */
    if (a->n == a->keep) {
        memmove(a->samples, a->samples + 1, (a->n - 1) * sizeof a->samples[0]);
        a->n--;
    }
    a->samples[a->n++] = rev;
    if (!leader || now_ms - a->last_ms < a->wait_ms)
        return 0;
    int64_t r = a->samples[0];
    return r > a->last_rev ? r : 0;
}

void ac_sched_done(struct ac_sched *a, uint64_t now_ms, int64_t rev, bool ok)
{
    if (!ok)
        return; /* periodic: the next tick tries again with the window moved on */
    a->last_rev = rev;
    if (a->mode == AC_PERIODIC) {
        a->last_ms = now_ms;
        a->wait_ms = a->retention < AC_HOUR_MS ? a->retention : AC_HOUR_MS;
    }
}

/* ---- the thread ---- */

struct autocompact {
    struct raft_node *node;
    struct kv_store *store;
    struct ac_sched sched;
    int timeout_ms;
    void (*log)(void *arg, const char *line);
    void *log_arg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void say(struct autocompact *a, const char *fmt, long long rev, const char *why)
{
    char line[256];
    snprintf(line, sizeof line, fmt, rev, why);
    if (a->log)
        a->log(a->log_arg, line);
}

/* Proposes Compact(rev) and waits for it to apply. true when it did, or found rev compacted. */
static bool compact(struct autocompact *a, int64_t rev)
{
    Etcdserverpb__CompactionRequest r = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    r.revision = rev;
    uint8_t *cmd;
    size_t len;
    if (kv_cmd_encode_compaction(&r, &cmd, &len) != 0)
        return false;
    struct raft_fsm_result res = {0};
    int rc = raft_node_propose_wait(a->node, cmd, len, a->timeout_ms, &res, NULL, NULL);
    free(cmd);
    bool ok = false;
    const char *why = "not applied (leadership changed, or timed out)";
    Craft__Kv__Result *out = rc == 0 ? kv_result_decode(res.data, res.len) : NULL;
    if (out) {
        ok = out->code == 0 || (out->message && !strcmp(out->message, KV_ERR_COMPACTED));
        why = out->code == 0 ? "" : out->message ? out->message : "refused";
        say(a, ok ? "auto compaction: compacted to revision %lld%s"
                  : "auto compaction: compacting to revision %lld failed: %s",
            (long long)rev, why);
        craft__kv__result__free_unpacked(out, NULL);
    } else {
        say(a, "auto compaction: compacting to revision %lld failed: %s", (long long)rev, why);
    }
    free(res.data);
    return ok;
}

static void *run(void *arg)
{
    struct autocompact *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(a->sched.interval_ms / 1000);
        until.tv_nsec += (long)(a->sched.interval_ms % 1000) * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        while (!a->stop && pthread_cond_timedwait(&a->cv, &a->mu, &until) != ETIMEDOUT)
            ;
        if (a->stop)
            break;
        pthread_mutex_unlock(&a->mu);
        int64_t rev = 0, compacted = 0;
        struct raft_node_status st;
        raft_node_status_get(a->node, &st);
        if (kv_store_status(a->store, &rev, &compacted, NULL, NULL) == 0) {
            uint64_t now = mono_ms();
            int64_t to = ac_sched_tick(&a->sched, now, rev, st.core.role == RAFT_LEADER);
            if (to > 0)
                ac_sched_done(&a->sched, mono_ms(), to, to <= compacted || compact(a, to));
        }
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

struct autocompact *autocompact_start(struct raft_node *node, struct kv_store *store, int mode,
                                      uint64_t retention, uint64_t revision_interval_ms,
                                      int timeout_ms, void (*log)(void *arg, const char *line),
                                      void *log_arg)
{
    if (retention == 0)
        return NULL;
    struct autocompact *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->node = node;
    a->store = store;
    a->timeout_ms = timeout_ms;
    a->log = log;
    a->log_arg = log_arg;
    ac_sched_init(&a->sched, mode, retention, revision_interval_ms, mono_ms());
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&a->mu, NULL);
    if (pthread_create(&a->thread, NULL, run, a) != 0) {
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        free(a);
        return NULL;
    }
    pthread_setname_np(a->thread, "autocompact");
    return a;
}

void autocompact_stop(struct autocompact *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}
