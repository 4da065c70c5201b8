/* Fuzz target for the KV state machine's decoding at apply (services/kvstore/kv_store.c
 * apply_entry: craft.kv.Command from each committed entry, after the kv_check_cmd_wire walk)
 * and for what the KV service does with the Result (kv_result_decode, kv_req_result). One
 * store, opened once in a fresh temporary directory (LMDB, a 16 MiB map) and reopened empty
 * every few thousand inputs or when it fills, takes the entries each input describes: records
 * [op][len][len bytes], at most 8, where op % 8 picks raw bytes as an entry (0; length 255:
 * the rest of the input) or a command
 * built from the bytes - Put (1), DeleteRange (2), Txn (3, nested with op & 16), LeaseGrant
 * (4), LeaseRevoke (5), Compact (6), LeaseCheckpoint (7) - so that inputs reach deep; op & 8
 * applies the entries so far as one batch before this one. Checked besides "no crash": apply
 * never fails; every entry's result decodes, with the code apply reported; a refused entry
 * leaves the revision as it was, an accepted one moves it by at most one; the result of a
 * command is of its kind for kv_req_result; the store's revision is the last result's; and a
 * valid Put after the input applies at the next revision and reads back. Built with clang's
 * libFuzzer (run_fuzz.sh) and as a corpus replay with the default toolchain. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw, mkdtemp */
#endif
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/kv_req.h"
#include "services/kvstore/kv_cmd.h"
#include "services/kvstore/kv_store.h"

#define MAP_SIZE (16u << 20)
#define RESET_EVERY 4000        /* inputs between reopenings: the store stays small and fast */
#define RESET_IN_USE (6u << 20) /* or when this much is used */
#define MAX_ENTRIES 8

static char dir[512];
static struct kv_store *store;
static struct raft_fsm *fsm;
static uint64_t next_index;
static unsigned inputs;

static void must(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "kv_apply_fuzz: %s\n", what);
        abort();
    }
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void close_store(void)
{
    if (store)
        kv_store_close(store);
    store = NULL;
    if (dir[0])
        nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    dir[0] = 0;
}

static void open_store(void)
{
    close_store();
    const char *tmp = getenv("TEST_TMPDIR");
    snprintf(dir, sizeof dir, "%s/kv_apply_fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    must(mkdtemp(dir) != NULL, "mkdtemp");
    /* Background syncs are rare: each one makes the next apply mark the store dirty again. */
    struct kv_store_opts o = {
        .map_size = MAP_SIZE, .boot_id = "kv-apply-fuzz", .sync_interval_ms = KV_MAX_SYNC_MS};
    char err[256];
    store = kv_store_open(dir, &o, err, sizeof err);
    if (!store)
        fprintf(stderr, "kv_apply_fuzz: open %s: %s\n", dir, err);
    must(store != NULL, "the store does not open");
    fsm = kv_store_fsm(store);
    next_index = fsm->applied_index(fsm->ctx) + 1;
    inputs = 0;
}

static int64_t revision(void)
{
    int64_t rev = 0;
    must(kv_store_status(store, &rev, NULL, NULL, NULL) == 0, "status fails");
    return rev;
}

/* ---- entries built from the input ---- */

struct entry {
    uint8_t *data;
    size_t len;
    int kind; /* enum kv_req_kind of the command, or -1 (raw, or no service kind) */
};

static int encode(Craft__Kv__Command *c, struct entry *e)
{
    e->len = craft__kv__command__get_packed_size(c);
    e->data = malloc(e->len ? e->len : 1);
    must(e->data != NULL, "out of memory");
    craft__kv__command__pack(c, e->data);
    return 0;
}

/* A key from the bytes: "k" and at most three of them, so that keys meet often. */
static ProtobufCBinaryData key_of(const uint8_t *p, size_t n, uint8_t *buf)
{
    size_t k = n < 3 ? n : 3;
    buf[0] = 'k';
    memcpy(buf + 1, p, k);
    return (ProtobufCBinaryData){k + 1, buf};
}

static int64_t lease_of(uint8_t b)
{
    return 1 + b % 8;
}

static void build(uint8_t op, const uint8_t *p, size_t n, struct entry *e)
{
    uint8_t kb[4], kb2[4];
    uint8_t b0 = n ? p[0] : 0, b1 = n > 1 ? p[1] : 0;
    Craft__Kv__Command c = CRAFT__KV__COMMAND__INIT;
    e->kind = -1;
    switch (op % 8) {
    case 0: /* raw bytes: the decoder at apply meets anything */
        e->len = n;
        e->data = malloc(n ? n : 1);
        must(e->data != NULL, "out of memory");
        if (n)
            memcpy(e->data, p, n);
        if (n) {
            Craft__Kv__Command *d = NULL;
            struct kv_err err;
            if (kv_check_cmd_wire(p, n, &err) == 0)
                d = craft__kv__command__unpack(NULL, n, p);
            if (d) {
                switch (d->op_case) {
                case CRAFT__KV__COMMAND__OP_PUT: e->kind = KV_REQ_PUT; break;
                case CRAFT__KV__COMMAND__OP_DELETE_RANGE: e->kind = KV_REQ_DELETE; break;
                case CRAFT__KV__COMMAND__OP_TXN: e->kind = KV_REQ_TXN; break;
                case CRAFT__KV__COMMAND__OP_COMPACTION: e->kind = KV_REQ_COMPACT; break;
                case CRAFT__KV__COMMAND__OP_LEASE_GRANT: e->kind = KV_REQ_LEASE_GRANT; break;
                case CRAFT__KV__COMMAND__OP_LEASE_REVOKE: e->kind = KV_REQ_LEASE_REVOKE; break;
                default: break;
                }
                craft__kv__command__free_unpacked(d, NULL);
            }
        }
        return;
    case 1: {
        Etcdserverpb__PutRequest r = ETCDSERVERPB__PUT_REQUEST__INIT;
        r.key = key_of(p, n, kb);
        size_t k = r.key.len - 1;
        r.value = (ProtobufCBinaryData){n - k, (uint8_t *)p + k};
        r.lease = op & 16 ? lease_of(b0) : 0;
        r.prev_kv = op & 32;
        r.ignore_lease = op & 64 && !r.lease;
        c.op_case = CRAFT__KV__COMMAND__OP_PUT;
        c.put = &r;
        e->kind = KV_REQ_PUT;
        encode(&c, e);
        return;
    }
    case 2: {
        Etcdserverpb__DeleteRangeRequest r = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
        r.key = key_of(p, n, kb);
        if (op & 16) { /* to the next prefix, or from the key on */
            memcpy(kb2, kb, r.key.len);
            kb2[r.key.len - 1]++;
            r.range_end = op & 64 ? (ProtobufCBinaryData){1, (uint8_t *)"\0"}
                                  : (ProtobufCBinaryData){r.key.len, kb2};
        }
        r.prev_kv = op & 32;
        c.op_case = CRAFT__KV__COMMAND__OP_DELETE_RANGE;
        c.delete_range = &r;
        e->kind = KV_REQ_DELETE;
        encode(&c, e);
        return;
    }
    case 3: {
        Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
        cmp.key = key_of(p + (n > 2), n > 2 ? n - 2 : 0, kb);
        cmp.result = (Etcdserverpb__Compare__CompareResult)(b0 % 4);
        cmp.target = (Etcdserverpb__Compare__CompareTarget)(b0 / 4 % 5);
        switch (cmp.target) {
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
            cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
            cmp.version = b1 % 4;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
            cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
            cmp.create_revision = b1;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
            cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
            cmp.mod_revision = b1;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
            cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
            cmp.lease = lease_of(b1);
            break;
        default:
            cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
            cmp.value = (ProtobufCBinaryData){n > 1 ? 1 : 0, (uint8_t *)p + 1};
        }
        Etcdserverpb__Compare *cmps[] = {&cmp};
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key = key_of(p, n, kb2);
        put.value = (ProtobufCBinaryData){n, (uint8_t *)p};
        put.lease = op & 32 ? lease_of(b1) : 0;
        Etcdserverpb__DeleteRangeRequest del = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
        del.key = cmp.key;
        del.prev_kv = 1;
        Etcdserverpb__RangeRequest rng = ETCDSERVERPB__RANGE_REQUEST__INIT;
        rng.key = (ProtobufCBinaryData){1, (uint8_t *)"k"};
        rng.range_end = (ProtobufCBinaryData){1, (uint8_t *)"l"};
        rng.revision = op & 64 ? b1 : 0;
        Etcdserverpb__RequestOp o_put = ETCDSERVERPB__REQUEST_OP__INIT,
                                o_del = ETCDSERVERPB__REQUEST_OP__INIT,
                                o_rng = ETCDSERVERPB__REQUEST_OP__INIT,
                                o_txn = ETCDSERVERPB__REQUEST_OP__INIT;
        o_put.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        o_put.request_put = &put;
        o_del.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
        o_del.request_delete_range = &del;
        o_rng.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        o_rng.request_range = &rng;
        Etcdserverpb__RequestOp *succ[] = {&o_put, &o_rng}, *fail[] = {&o_del, &o_rng};
        Etcdserverpb__TxnRequest inner = ETCDSERVERPB__TXN_REQUEST__INIT, t = inner;
        inner.n_compare = 1;
        inner.compare = cmps;
        inner.n_success = 2;
        inner.success = succ;
        inner.n_failure = 2;
        inner.failure = fail;
        if (op & 16) { /* the same one level down, under an always-true compare-less txn */
            o_txn.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
            o_txn.request_txn = &inner;
            Etcdserverpb__RequestOp *outer[] = {&o_txn, &o_rng};
            t.n_success = 2;
            t.success = outer;
            c.txn = &t;
            c.op_case = CRAFT__KV__COMMAND__OP_TXN;
            e->kind = KV_REQ_TXN;
            encode(&c, e);
            return;
        }
        c.txn = &inner;
        c.op_case = CRAFT__KV__COMMAND__OP_TXN;
        e->kind = KV_REQ_TXN;
        encode(&c, e);
        return;
    }
    case 4: {
        Etcdserverpb__LeaseGrantRequest r = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
        r.id = op & 16 ? (int64_t)b0 - 4 : lease_of(b0); /* sometimes 0 or negative */
        r.ttl = op & 32 ? (int64_t)b1 * 100000000LL : b1;
        c.op_case = CRAFT__KV__COMMAND__OP_LEASE_GRANT;
        c.lease_grant = &r;
        e->kind = KV_REQ_LEASE_GRANT;
        encode(&c, e);
        return;
    }
    case 5: {
        Etcdserverpb__LeaseRevokeRequest r = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        r.id = lease_of(b0);
        c.op_case = CRAFT__KV__COMMAND__OP_LEASE_REVOKE;
        c.lease_revoke = &r;
        e->kind = KV_REQ_LEASE_REVOKE;
        encode(&c, e);
        return;
    }
    case 6: {
        Etcdserverpb__CompactionRequest r = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
        r.revision = revision() - (int64_t)(b0 % 16) + (op & 16 ? 3 : 0);
        r.physical = op & 32;
        c.op_case = CRAFT__KV__COMMAND__OP_COMPACTION;
        c.compaction = &r;
        e->kind = KV_REQ_COMPACT;
        encode(&c, e);
        return;
    }
    default: {
        Etcdserverpb__LeaseCheckpoint cp[2] = {ETCDSERVERPB__LEASE_CHECKPOINT__INIT,
                                              ETCDSERVERPB__LEASE_CHECKPOINT__INIT};
        Etcdserverpb__LeaseCheckpoint *cps[] = {&cp[0], &cp[1]};
        cp[0].id = lease_of(b0);
        cp[0].remaining_ttl = op & 16 ? -1 : b1;
        cp[1].id = lease_of(b1);
        cp[1].remaining_ttl = b0;
        Etcdserverpb__LeaseCheckpointRequest r = ETCDSERVERPB__LEASE_CHECKPOINT_REQUEST__INIT;
        r.n_checkpoints = op & 32 ? 2 : 1;
        r.checkpoints = cps;
        c.op_case = CRAFT__KV__COMMAND__OP_LEASE_CHECKPOINT;
        c.lease_checkpoint = &r;
        encode(&c, e);
        return;
    }
    }
}

/* ---- applying and checking ---- */

static bool full; /* a result said the map is full: reopen after this input */

/* Applies es[0, n) as one batch; checks each result against the revision before it. */
static void apply(struct entry *es, size_t n, int64_t *rev)
{
    struct raft_entry re[MAX_ENTRIES + 1];
    struct raft_fsm_result res[MAX_ENTRIES + 1];
    memset(res, 0, sizeof res);
    for (size_t i = 0; i < n; i++)
        re[i] = (struct raft_entry){next_index++, 1, RAFT_ENTRY_NORMAL, (uint32_t)es[i].len,
                                    es[i].len ? es[i].data : NULL};
    must(fsm->apply(fsm->ctx, re, n, re[n - 1].index, res) == 0, "apply failed");
    must(fsm->applied_index(fsm->ctx) == re[n - 1].index, "applied index wrong");
    for (size_t i = 0; i < n; i++) {
        Craft__Kv__Result *r = kv_result_decode(res[i].data, res[i].len);
        must(r != NULL, "a result does not decode");
        must((int)r->code == res[i].code, "the result's code is not apply's");
        if (r->code == KV_CODE_RESOURCE_EXHAUSTED && strcmp(r->message, KV_ERR_NO_SPACE) == 0)
            full = true;
        if (r->code)
            must(r->revision == *rev, "a refused entry moved the revision");
        else
            must(r->revision == *rev || r->revision == *rev + 1, "an entry moved it by more");
        *rev = r->revision;
        craft__kv__result__free_unpacked(r, NULL);
        if (es[i].kind >= 0) { /* what the service answers the client */
            Craft__Kv__Result *rr;
            ProtobufCMessage *resp;
            Etcdserverpb__ResponseHeader **hp;
            int code;
            const char *msg;
            int rc = kv_req_result((enum kv_req_kind)es[i].kind, res[i].data, res[i].len, &rr,
                                   &resp, &hp, &code, &msg);
            must(rc == 0 ? resp != NULL : code == res[i].code, "the answer's kind is wrong");
            if (rr)
                craft__kv__result__free_unpacked(rr, NULL);
        }
        free(res[i].data);
    }
}

/* A Put that must apply, at the next revision, and read back. */
static void sentinel(int64_t *rev, size_t tag)
{
    uint8_t val[sizeof tag];
    memcpy(val, &tag, sizeof tag);
    Etcdserverpb__PutRequest r = ETCDSERVERPB__PUT_REQUEST__INIT;
    r.key = (ProtobufCBinaryData){8, (uint8_t *)"sentinel"};
    r.value = (ProtobufCBinaryData){sizeof val, val};
    struct entry e = {0};
    must(kv_cmd_encode_put(&r, &e.data, &e.len) == 0, "out of memory");
    e.kind = KV_REQ_PUT;
    int64_t before = *rev;
    apply(&e, 1, rev);
    free(e.data);
    if (full)
        return;
    must(*rev == before + 1, "a valid Put after the input did not apply");
    Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
    q.key = r.key;
    Etcdserverpb__RangeResponse *out;
    struct kv_err err;
    must(kv_store_range(store, &q, &out, &err) == 0, "the sentinel does not read");
    must(out->n_kvs == 1 && out->kvs[0]->value.len == sizeof val &&
             memcmp(out->kvs[0]->value.data, val, sizeof val) == 0 &&
             out->kvs[0]->mod_revision == *rev,
         "the sentinel reads back wrong");
    etcdserverpb__range_response__free_unpacked(out, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!store) {
        open_store();
        atexit(close_store);
    }
    struct entry es[MAX_ENTRIES];
    size_t n = 0, batch_start = 0;
    int64_t rev = revision();
    size_t off = 0;
    while (off + 2 <= size && n < MAX_ENTRIES) {
        uint8_t op = data[off], len = data[off + 1];
        off += 2;
        size_t l = len < size - off ? len : size - off;
        if (op % 8 == 0 && len == 255) /* a raw entry to the end: deep or long commands */
            l = size - off;
        if (op & 8 && n > batch_start) {
            apply(es + batch_start, n - batch_start, &rev);
            batch_start = n;
        }
        build(op, data + off, l, &es[n++]);
        off += l;
    }
    if (n > batch_start)
        apply(es + batch_start, n - batch_start, &rev);
    for (size_t i = 0; i < n; i++)
        free(es[i].data);
    must(revision() == rev, "the store's revision is not the last result's");
    if (!full)
        sentinel(&rev, size);
    int64_t in_use = kv_store_size_in_use(store);
    if (full || ++inputs >= RESET_EVERY || in_use > (int64_t)RESET_IN_USE) {
        full = false;
        open_store();
    }
    return 0;
}
