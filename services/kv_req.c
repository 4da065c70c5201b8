/* kv_req.c: the KV service's decoding, validation and encoding of client requests and the
 * mapping of results to responses, without gRPC (see kv_req.h). */
#include "services/kv_req.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define KV_REQ_ERR_WRONG_KIND "craft: state machine result of the wrong kind"
#define KV_REQ_ERR_UNDECODABLE "craft: undecodable state machine result"

static int refuse(struct kv_err *err, int code, const char *msg)
{
    err->code = code;
    snprintf(err->msg, sizeof err->msg, "%s", msg);
    return -1;
}

/* protobuf-c takes a multi-byte (overlong) tag with field number 0 as an unknown field and
 * packs it back as the one-byte tag it refuses, so such a request would enter the log as a
 * command no member can decode. Go's protobuf (etcd) refuses field 0 when it unmarshals: so do
 * we, wherever it is nested. depth: the Txn's nesting, already bounded on the wire. */
static bool has_field_zero(const ProtobufCMessage *m, int depth)
{
    if (!m || depth > KV_MAX_TXN_DEPTH * 2 + 4)
        return false;
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return true;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
                continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
            ProtobufCMessage *const *v =
                *(ProtobufCMessage *const *const *)(const void *)(base + f->offset);
            for (size_t j = 0; j < n; j++)
                if (has_field_zero(v[j], depth + 1))
                    return true;
        } else if (has_field_zero(*(ProtobufCMessage *const *)(const void *)(base + f->offset),
                                  depth + 1)) {
            return true;
        }
    }
    return false;
}

static int nomem(struct kv_err *err)
{
    return refuse(err, KV_CODE_RESOURCE_EXHAUSTED, KV_REQ_ERR_NOMEM);
}

int kv_req_write(enum kv_req_kind kind, const ProtobufCMessage *m, uint8_t **cmd, size_t *len,
                 int64_t *physical_rev, struct kv_err *err)
{
    int rc, enc;
    *cmd = NULL;
    *len = 0;
    *physical_rev = 0;
    if (has_field_zero(m, 0))
        return refuse(err, KV_CODE_INVALID_ARGUMENT, KV_REQ_ERR_UNMARSHAL);
    switch (kind) {
    case KV_REQ_PUT:
        rc = kv_validate_put((const Etcdserverpb__PutRequest *)m, err);
        enc = rc ? 0 : kv_cmd_encode_put((const Etcdserverpb__PutRequest *)m, cmd, len);
        break;
    case KV_REQ_DELETE:
        rc = kv_validate_delete_range((const Etcdserverpb__DeleteRangeRequest *)m, err);
        enc = rc ? 0
                 : kv_cmd_encode_delete_range((const Etcdserverpb__DeleteRangeRequest *)m, cmd,
                                              len);
        break;
    case KV_REQ_COMPACT: {
        const Etcdserverpb__CompactionRequest *c = (const Etcdserverpb__CompactionRequest *)m;
        if (c && c->physical)
            *physical_rev = c->revision;
        rc = kv_validate_compaction(c, err);
        enc = rc ? 0 : kv_cmd_encode_compaction(c, cmd, len);
        break;
    }
    default:
        return refuse(err, KV_CODE_INVALID_ARGUMENT, KV_ERR_BAD_COMMAND);
    }
    if (rc)
        return -1;
    return enc ? nomem(err) : 0;
}

Etcdserverpb__RangeRequest *kv_req_range(const uint8_t *data, size_t len, struct kv_err *err)
{
    Etcdserverpb__RangeRequest *r = etcdserverpb__range_request__unpack(NULL, len, data);
    if (r && has_field_zero(&r->base, 0)) {
        etcdserverpb__range_request__free_unpacked(r, NULL);
        r = NULL;
    }
    if (!r) {
        refuse(err, KV_CODE_INVALID_ARGUMENT, KV_REQ_ERR_UNMARSHAL);
        return NULL;
    }
    if (kv_validate_range(r, err)) {
        etcdserverpb__range_request__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

int kv_req_txn(const uint8_t *data, size_t len, unsigned max_txn_ops,
               Etcdserverpb__TxnRequest **read, uint8_t **cmd, size_t *clen, struct kv_err *err)
{
    *read = NULL;
    *cmd = NULL;
    *clen = 0;
    /* protobuf-c unpacks nested Txns recursively: bound the depth on the raw bytes first. */
    if (kv_check_txn_wire(data, len, err) != 0)
        return -1;
    Etcdserverpb__TxnRequest *r = etcdserverpb__txn_request__unpack(NULL, len, data);
    if (r && has_field_zero(&r->base, 0)) {
        etcdserverpb__txn_request__free_unpacked(r, NULL);
        r = NULL;
    }
    if (!r)
        return refuse(err, KV_CODE_INVALID_ARGUMENT, KV_REQ_ERR_UNMARSHAL);
    if (kv_validate_txn(r, max_txn_ops, err)) {
        etcdserverpb__txn_request__free_unpacked(r, NULL);
        return -1;
    }
    if (kv_txn_is_readonly(r)) {
        *read = r;
        return 0;
    }
    int rc = kv_cmd_encode_txn(r, cmd, clen);
    etcdserverpb__txn_request__free_unpacked(r, NULL);
    return rc ? nomem(err) : 0;
}

int kv_req_result(enum kv_req_kind kind, const uint8_t *data, size_t len, Craft__Kv__Result **res,
                  ProtobufCMessage **resp, Etcdserverpb__ResponseHeader ***hp, int *code,
                  const char **msg)
{
    *resp = NULL;
    *hp = NULL;
    Craft__Kv__Result *r = *res = kv_result_decode(data, len);
    if (!r) {
        *code = KV_CODE_INTERNAL;
        *msg = KV_REQ_ERR_UNDECODABLE;
        return -1;
    }
    if (r->code) {
        *code = (int)r->code;
        *msg = r->message ? r->message : "";
        return -1;
    }
    /* The responses are a oneof: a union in protobuf-c, so only resp_case tells which one is
     * there (r->put is not NULL when a Txn's response is). */
    switch (kind) {
    case KV_REQ_PUT:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_PUT && r->put) {
            *resp = &r->put->base;
            *hp = &r->put->header;
        }
        break;
    case KV_REQ_DELETE:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_DELETE_RANGE && r->delete_range) {
            *resp = &r->delete_range->base;
            *hp = &r->delete_range->header;
        }
        break;
    case KV_REQ_TXN:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_TXN && r->txn) {
            *resp = &r->txn->base;
            *hp = &r->txn->header;
        }
        break;
    case KV_REQ_COMPACT:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_COMPACTION && r->compaction) {
            *resp = &r->compaction->base;
            *hp = &r->compaction->header;
        }
        break;
    case KV_REQ_LEASE_GRANT:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_LEASE_GRANT && r->lease_grant) {
            *resp = &r->lease_grant->base;
            *hp = &r->lease_grant->header;
        }
        break;
    case KV_REQ_LEASE_REVOKE:
        if (r->resp_case == CRAFT__KV__RESULT__RESP_LEASE_REVOKE && r->lease_revoke) {
            *resp = &r->lease_revoke->base;
            *hp = &r->lease_revoke->header;
        }
        break;
    default:
        break;
    }
    if (!*resp) {
        *code = KV_CODE_INTERNAL;
        *msg = KV_REQ_ERR_WRONG_KIND;
    }
    return 0;
}
