/* watch_client.h: a test client for /etcdserverpb.Watch/Watch over an rpc channel. Every
 * response the stream receives is decoded and queued; tests take them in order with bounded
 * waits. A client can be paused: its stream callback then waits (holding the channel's
 * thread), so the server sees a reader that does not read. */
#ifndef CRAFT_TESTS_SERVICES_WATCH_CLIENT_H
#define CRAFT_TESTS_SERVICES_WATCH_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "rpc/rpc.h"
#include "services/proto/etcd/rpc.pb-c.h"

struct wc;

struct wc_create {
    const char *key;
    const char *end;  /* NULL: one key; "\0" is written as end_zero */
    bool end_zero;    /* range_end "\0": every key >= key */
    int64_t start;
    int64_t id;
    bool prev_kv, fragment, progress_notify;
    int filters[4];
    int n_filters;
};

struct wc *wc_open(struct rpc_channel *ch);
/* Half-closes, waits for the end (bounded) and frees. */
void wc_close(struct wc *c);
int wc_send_raw(struct wc *c, const uint8_t *data, size_t len);
int wc_create(struct wc *c, const struct wc_create *r);
int wc_cancel(struct wc *c, int64_t id);
int wc_progress(struct wc *c);
/* The next response, waiting up to timeout_ms; NULL if none (free with
 * etcdserverpb__watch_response__free_unpacked). */
Etcdserverpb__WatchResponse *wc_next(struct wc *c, int timeout_ms);
/* Whether the stream ended (waiting up to timeout_ms), and its status. */
bool wc_ended(struct wc *c, int timeout_ms, grpc_status_code *status);
void wc_pause(struct wc *c, bool paused);
/* Responses received so far and not taken. */
int wc_queued(struct wc *c);

#endif
