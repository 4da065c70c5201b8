/* craftd: the craft server. Flags as etcd's (craftd --help); see README "Configuration". Exit
 * status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the member cannot start or run
 * (also after a storage failure stopped it, e.g. a full disk), or was removed from the cluster
 * ("the member has been permanently removed from the cluster", etcd's words), 2 for bad flags.
 *
 * Logging (log/log.h) follows --logger, --log-level and --log-outputs from the start; a bad
 * flag is told on stderr in plain text, as etcd does (exit 2), and so is an --log-outputs file
 * that cannot be opened.
 *
 * The main thread waits for whichever comes first: a stop signal (a thread of its own takes it
 * with sigwait), the server's word that this member was removed (craft_server_on_removed), or
 * the node's fail-stop after a storage or state machine failure (a full disk, an I/O error;
 * polled every second): it stops the server on this normal thread, and after a failure exits 1,
 * as etcd does, so a supervisor restarts it (a restart recovers from the log once the cause is
 * fixed) instead of it answering every request with an error. While it waits it writes the counts
 * of rate-limited log lines every --log-rate-limit-interval (log_flush_suppressed).
 *
 * Test faults: compiled with CRAFT_TEST_FAULTS (the testonly target craftd_testfaults, never
 * the craftd binary) it reads CRAFT_TEST_FAULT_SNAPSHOT_CHUNK=N once at start and flips a byte
 * of the Nth snapshot chunk it sends (services/peer.h, docs/snapshots.md "Test fault"), saying
 * so in its log. The craftd binary has no code that reads the variable. */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "rpc/rpc.h"
#include "services/craftd_flags.h"
#include "services/heap.h"
#include "services/server.h"

/* What the allocator may keep free for reuse (heap.h). */
#define HEAP_KEEP_BYTES ((size_t)32 << 20)

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sig;         /* the stop signal received, 0 if none */
    bool removed;
    char why[400];
} stop_state = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false, ""};

static void *signal_main(void *arg)
{
    const sigset_t *stop = arg;
    int sig = 0;
    if (sigwait(stop, &sig) != 0)
        return NULL;
    pthread_mutex_lock(&stop_state.mu);
    stop_state.sig = sig;
    pthread_cond_signal(&stop_state.cv);
    pthread_mutex_unlock(&stop_state.mu);
    return NULL;
}

static void on_removed(void *arg, const char *why)
{
    (void)arg;
    pthread_mutex_lock(&stop_state.mu);
    stop_state.removed = true;
    snprintf(stop_state.why, sizeof stop_state.why, "%s", why);
    pthread_cond_signal(&stop_state.cv);
    pthread_mutex_unlock(&stop_state.mu);
}

int main(int argc, char **argv)
{
    static struct craftd_config cfg; /* large: keep it off the stack */
    char err[512];
    int rc = craftd_flags_parse(argc, argv, &cfg, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "craftd: %s\n", err);
        return 2;
    }
    /* Before anything starts gRPC: it reads its cipher list once (rpc/rpc.h). */
    if (cfg.cipher_suites && *cfg.cipher_suites &&
        rpc_tls_set_cipher_suites(cfg.cipher_suites, cfg.cipher_list, sizeof cfg.cipher_list, err,
                                  sizeof err) != 0) {
        fprintf(stderr, "craftd: %s (--cipher-suites)\n", err);
        return 2;
    }
    struct log_config lc = {
        .format = cfg.log_format,
        .level = cfg.log_level,
        .outputs = cfg.log_outputs,
        .max_line_bytes = cfg.max_log_line_bytes,
        .repeat_interval_ms = cfg.log_rate_limit_interval_ms,
        .repeat_burst = cfg.log_rate_limit_burst,
    };
    if (log_configure(&lc, err, sizeof err) != 0) {
        fprintf(stderr, "craftd: %s\n", err);
        return 2;
    }
    struct log_field me[] = {LOG_STR("name", cfg.name), LOG_ID("member", cfg.self_id), {.key = NULL}};
#ifdef CRAFT_TEST_FAULTS
    const char *fault = getenv("CRAFT_TEST_FAULT_SNAPSHOT_CHUNK");
    if (fault && *fault) {
        char *end;
        cfg.test_fault_snapshot_chunk = strtoull(fault, &end, 10);
        if (*end || !cfg.test_fault_snapshot_chunk) {
            fprintf(stderr, "craftd: CRAFT_TEST_FAULT_SNAPSHOT_CHUNK=%s: want a count from 1\n",
                    fault);
            return 2;
        }
        log_warn(me, "test fault build: snapshot chunk %llu this member sends will be corrupted",
                 (unsigned long long)cfg.test_fault_snapshot_chunk);
    }
#endif
    /* Block the stop signals in every thread (they inherit this mask), then wait for one here:
     * shutdown runs on a normal thread, not in a signal handler. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct craft_server *s = craft_server_start(&cfg, err, sizeof err);
    if (!s) {
        log_error(me, "craftd: %s", err);
        return 1;
    }
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, signal_main, &stop) != 0) {
        log_error(me, "craftd: cannot start the signal thread");
        craft_server_stop(s);
        return 1;
    }
    pthread_detach(sig_thread); /* still in sigwait if the member was removed: exit ends it */
    craft_server_on_removed(s, on_removed, NULL);
    uint64_t flush_ms = cfg.log_rate_limit_interval_ms, waited_ms = 0;
    uint64_t step_ms = flush_ms < 1000 ? flush_ms : 1000;
    int failed = 0;
    struct heap_scavenger scav = {0};
    /* The TLS files' expiry: at start, then each minute (a warning at most once a day each). */
    craft_server_check_certs(s, (int64_t)time(NULL));
    uint64_t cert_waited_ms = 0;
    pthread_mutex_lock(&stop_state.mu);
    while (!stop_state.sig && !stop_state.removed && !failed) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)(step_ms / 1000);
        until.tv_nsec += (long)(step_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&stop_state.cv, &stop_state.mu, &until);
        pthread_mutex_unlock(&stop_state.mu);
        if ((waited_ms += step_ms) >= flush_ms) {
            waited_ms = 0;
            log_flush_suppressed(false);
        }
        /* Free pages beyond 32 MiB that stayed free for 5 s go back to the OS (heap.h): VmRSS
         * comes down after a burst, and a loaded leader keeps what its churn reuses. */
        if ((cert_waited_ms += step_ms) >= 60000) {
            cert_waited_ms = 0;
            craft_server_check_certs(s, (int64_t)time(NULL));
        }
        size_t released = heap_scavenge(&scav, HEAP_KEEP_BYTES);
        if (released)
            log_debug(me, "craftd: returned %zu KiB of free heap to the OS", released >> 10);
        struct raft_node_status st;
        raft_node_status_get(craft_server_node(s), &st);
        failed = st.fatal;
        pthread_mutex_lock(&stop_state.mu);
    }
    int sig = stop_state.sig;
    bool removed = stop_state.removed && !sig;
    pthread_mutex_unlock(&stop_state.mu);
    if (failed && !sig && !removed) {
        log_error(me, "craftd %s: stopping: the member fail-stopped after a storage or state "
                      "machine failure (%s; the error logged before this says which); restart "
                      "it once the cause (a full disk?) is fixed",
                  cfg.name, raft_node_strerror(failed));
        craft_server_stop(s);
        log_flush_suppressed(true);
        log_error(me, "craftd %s: stopped after a storage or state machine failure", cfg.name);
        return 1;
    }
    if (removed)
        log_warn(me, "craftd %s: the member has been permanently removed from the cluster (%s); "
                     "shutting down",
                 cfg.name, stop_state.why);
    else
        log_info(me, "craftd %s: %s received, shutting down", cfg.name, strsignal(sig));
    craft_server_stop(s);
    if (removed) {
        log_warn(me, "craftd %s: stopped: the member has been permanently removed from the "
                     "cluster",
                 cfg.name);
        log_flush_suppressed(true);
        return 1;
    }
    log_flush_suppressed(true);
    log_info(me, "craftd %s: stopped", cfg.name);
    return 0;
}
