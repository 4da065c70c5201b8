/* craftd: the craft server. Flags as etcd's (craftd --help); see README "Configuration". Exit
 * status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the member cannot start or run,
 * 2 for bad flags. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "services/craftd_flags.h"
#include "services/server.h"

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
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "craftd %s: %s received, shutting down\n", cfg.name, strsignal(sig));
    craft_server_stop(s);
    fprintf(stderr, "craftd %s: stopped\n", cfg.name);
    return 0;
}
