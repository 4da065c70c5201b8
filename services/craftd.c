/* craftd: the craft server. Flags as etcd's (craftd --help); see README "Configuration". Exit
 * status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the member cannot start or run,
 * or was removed from the cluster ("the member has been permanently removed from the cluster",
 * etcd's words), 2 for bad flags.
 *
 * The main thread waits for whichever comes first: a stop signal (a thread of its own takes it
 * with sigwait) or the server's word that this member was removed (craft_server_on_removed);
 * either way it stops the server on this normal thread. */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "services/craftd_flags.h"
#include "services/server.h"

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
        fprintf(stderr, "craftd: %s\n", err);
        return 1;
    }
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, signal_main, &stop) != 0) {
        fprintf(stderr, "craftd: cannot start the signal thread\n");
        craft_server_stop(s);
        return 1;
    }
    pthread_detach(sig_thread); /* still in sigwait if the member was removed: exit ends it */
    craft_server_on_removed(s, on_removed, NULL);
    pthread_mutex_lock(&stop_state.mu);
    while (!stop_state.sig && !stop_state.removed)
        pthread_cond_wait(&stop_state.cv, &stop_state.mu);
    int sig = stop_state.sig;
    bool removed = stop_state.removed && !sig;
    pthread_mutex_unlock(&stop_state.mu);
    if (removed)
        fprintf(stderr, "craftd %s: the member has been permanently removed from the cluster (%s); "
                        "shutting down\n",
                cfg.name, stop_state.why);
    else
        fprintf(stderr, "craftd %s: %s received, shutting down\n", cfg.name, strsignal(sig));
    craft_server_stop(s);
    if (removed) {
        fprintf(stderr, "craftd %s: stopped: the member has been permanently removed from the "
                        "cluster\n",
                cfg.name);
        return 1;
    }
    fprintf(stderr, "craftd %s: stopped\n", cfg.name);
    return 0;
}
