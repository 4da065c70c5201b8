/* maint_snapshot.c: etcd's Maintenance.Snapshot (see maint_snapshot.h). */
#include "services/maint_snapshot.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/proto/etcd/rpc.pb-c.h"

#define SHA256_LEN 32

struct snapstream {
    struct maint_snapshot *ms;
    FILE *f;          /* the staged copy, unlinked */
    uint64_t size;    /* payload bytes in f */
    uint64_t sent;    /* blob bytes queued so far, the hash included */
    EVP_MD_CTX *sha;  /* SHA-256 over the payload bytes sent so far */
    uint8_t digest[SHA256_LEN];
    bool hashed;      /* digest is final */
    uint8_t *buf;
    bool started, finished, counted;
};

static int stage_write(void *arg, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, arg) == len ? 0 : -EIO;
}

static void finish(struct rpc_stream *st, struct snapstream *ss, grpc_status_code code,
                   const char *msg)
{
    if (ss->finished)
        return;
    ss->finished = true;
    rpc_stream_finish(st, code, msg);
}

/* Queues chunks until MAINT_SNAPSHOT_QUEUE are waiting or all is sent; then the hash; then OK. */
static void pump(struct rpc_stream *st, struct snapstream *ss)
{
    uint64_t total = ss->size + SHA256_LEN;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.cluster_id = ss->ms->cluster_id;
    h.member_id = ss->ms->member_id;
    for (int k = 0; k < MAINT_SNAPSHOT_QUEUE && ss->sent < total && !ss->finished; k++) {
        size_t n;
        uint8_t *blob = ss->buf;
        bool payload = ss->sent < ss->size;
        if (payload) {
            uint64_t left = ss->size - ss->sent;
            n = left < MAINT_SNAPSHOT_CHUNK ? (size_t)left : MAINT_SNAPSHOT_CHUNK;
            if (fseeko(ss->f, (off_t)ss->sent, SEEK_SET) != 0 || fread(ss->buf, 1, n, ss->f) != n) {
                finish(st, ss, GRPC_STATUS_INTERNAL, "snapshot: reading the staged copy failed");
                return;
            }
        } else {
            if (!ss->hashed) {
                EVP_DigestFinal_ex(ss->sha, ss->digest, NULL); /* etcd's trailer: the hash */
                ss->hashed = true;
            }
            blob = ss->digest;
            n = SHA256_LEN;
        }
        Etcdserverpb__SnapshotResponse r = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
        r.header = &h;
        r.remaining_bytes = total - ss->sent - n;
        r.blob.data = blob;
        r.blob.len = n;
        int rc = rpc_stream_send_msg(st, &r.base);
        if (rc == RPC_EFULL)
            return; /* on_sent comes back when the queue drains; this chunk is sent then */
        if (rc != 0) {
            finish(st, ss, GRPC_STATUS_UNAVAILABLE, "snapshot: the stream closed");
            return;
        }
        if (payload)
            EVP_DigestUpdate(ss->sha, ss->buf, n);
        ss->sent += n;
    }
    if (ss->sent == total)
        finish(st, ss, GRPC_STATUS_OK, NULL);
}

static void *on_open(struct rpc_stream *st, void *ctx)
{
    (void)st;
    struct snapstream *ss = calloc(1, sizeof *ss);
    if (ss)
        ss->ms = ctx;
    return ss;
}

static void on_message(struct rpc_stream *st, const uint8_t *data, size_t len, void *user)
{
    struct snapstream *ss = user;
    if (!ss) {
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (ss->started)
        return; /* one request per stream; etcd ignores more */
    ss->started = true;
    ProtobufCMessage *req = rpc_msg_unpack(&etcdserverpb__snapshot_request__descriptor, data, len);
    if (!req) {
        finish(st, ss, GRPC_STATUS_INVALID_ARGUMENT, "snapshot: bad request");
        return;
    }
    protobuf_c_message_free_unpacked(req, NULL);
    if (ss->ms->learner && atomic_load(ss->ms->learner)) {
        finish(st, ss, GRPC_STATUS_UNAVAILABLE, "etcdserver: rpc not supported for learner");
        return;
    }
    if (ss->ms->admin) {
        char msg[160];
        int code = ss->ms->admin(ss->ms->admin_arg, NULL, st, msg, sizeof msg);
        if (code) {
            finish(st, ss, (grpc_status_code)code, msg);
            return;
        }
    }
    if (atomic_fetch_add(&ss->ms->active, 1) >= MAINT_SNAPSHOT_MAX_STREAMS) {
        atomic_fetch_sub(&ss->ms->active, 1);
        finish(st, ss, GRPC_STATUS_RESOURCE_EXHAUSTED, "snapshot: another one is being taken");
        return;
    }
    ss->counted = true;
    struct raft_fsm *fsm = ss->ms->fsm;
    char why[256] = "";
    ss->f = tmpfile();
    ss->buf = malloc(MAINT_SNAPSHOT_CHUNK);
    struct raft_snapshot_writer w = {stage_write, ss->f, why, sizeof why};
    uint64_t index = 0, term = 0;
    int rc = !ss->f || !ss->buf || !fsm->snapshot_write
                 ? -ENOMEM
                 : fsm->snapshot_write(fsm->ctx, &w, &index, &term);
    if (rc == 0 && (fflush(ss->f) != 0 || fseeko(ss->f, 0, SEEK_END) != 0))
        rc = -EIO;
    if (rc) {
        char msg[320];
        snprintf(msg, sizeof msg, "snapshot failed: %s", why[0] ? why : strerror(-rc));
        finish(st, ss, GRPC_STATUS_INTERNAL, msg);
        return;
    }
    ss->size = (uint64_t)ftello(ss->f);
    /* etcdctl 3.4 takes everything but the last 32 bytes as a bbolt file and refuses ("sha256
     * checksum not found") a size that is not a multiple of 512: pad with zeros. */
    static const uint8_t zeros[512];
    size_t pad = (size_t)((512 - ss->size % 512) % 512);
    if (pad && (fwrite(zeros, 1, pad, ss->f) != pad || fflush(ss->f) != 0)) {
        finish(st, ss, GRPC_STATUS_INTERNAL, "snapshot: staging failed");
        return;
    }
    ss->size += pad;
    ss->sha = EVP_MD_CTX_new();
    if (!ss->sha || EVP_DigestInit_ex(ss->sha, EVP_sha256(), NULL) != 1) {
        finish(st, ss, GRPC_STATUS_RESOURCE_EXHAUSTED, "snapshot: out of memory");
        return;
    }
    pump(st, ss);
}

/* The queue drained: send the next chunks (one refused as full was not counted as sent). */
static void on_sent(struct rpc_stream *st, void *user)
{
    struct snapstream *ss = user;
    if (ss && !ss->finished && ss->sha)
        pump(st, ss);
}

static void on_close(struct rpc_stream *st, grpc_status_code status, void *user)
{
    (void)status;
    struct snapstream *ss = user;
    if (!ss) {
        rpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    finish(st, ss, GRPC_STATUS_CANCELLED, "snapshot: cancelled");
    if (ss->counted)
        atomic_fetch_sub(&ss->ms->active, 1);
    if (ss->f)
        fclose(ss->f);
    EVP_MD_CTX_free(ss->sha);
    free(ss->buf);
    free(ss);
}

int maint_snapshot_register(struct rpc_server *srv, struct maint_snapshot *ms)
{
    static const struct rpc_stream_handler h = {on_open, on_message, on_close, on_sent};
    return rpc_server_register_stream(srv, "/etcdserverpb.Maintenance/Snapshot", &h, ms) ? -1 : 0;
}
