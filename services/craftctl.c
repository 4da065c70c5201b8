/* craftctl: craft's operator tool. Reads and writes use the etcd v3 KV API (etcdctl works too);
 * status uses craft's own craft.node.Node/Status.
 *
 *   craftctl [--endpoints URL[,URL...]] [--cacert F --cert F --key F | --insecure] CMD ...
 *     put KEY VALUE        write through the first endpoint (a follower forwards to the leader)
 *     get KEY              linearizable read from the first endpoint
 *     status               one line per endpoint: name, role, term, leader, commit, applied
 *   craftctl snapshot restore FILE --name N --initial-cluster C --initial-cluster-token T
 *            --data-dir D [--quota-backend-bytes B]
 *                          a new member's data directory from `etcdctl snapshot save` of a craft
 *                          member (services/snap_restore.h; etcdutl's restore for etcd)
 * Load generation is craft-bench's job (bench/craft_bench.c).
 *
 * Exit status: 0 ok, 1 the request failed, 2 bad usage. Errors name the endpoint and the gRPC
 * status. Endpoints default to https://127.0.0.1:2379.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc.h"
#include "services/cluster.h"
#include "services/snap_restore.h"
#include "services/proto/etcd/rpc.pb-c.h"
#include "services/proto/nodepb.pb-c.h"

#define MAX_EP 16
#define DEADLINE_MS 10000

struct opts {
    struct rpc_tls tls;
    bool insecure;
    char *eps[MAX_EP];
    int n_eps;
};

static int usage(void)
{
    fprintf(stderr,
            "usage: craftctl [--endpoints URL,...] [--cacert F --cert F --key F | --insecure]\n"
            "                put KEY VALUE | get KEY | status\n"
            "       craftctl snapshot restore FILE --name N --initial-cluster C\n"
            "                --initial-cluster-token T --data-dir D [--quota-backend-bytes B]\n");
    return 2;
}

static struct rpc_channel *dial(const struct opts *o, const char *url, char *err, size_t errlen)
{
    struct cluster_url u;
    if (cluster_parse_url(url, &u, err, errlen) != 0)
        return NULL;
    if (u.tls == o->insecure) {
        snprintf(err, errlen, "%s: use https:// with certificates, or http:// with --insecure", url);
        return NULL;
    }
    char target[CLUSTER_HOST_MAX + 16];
    cluster_url_target(&u, target, sizeof target);
    struct rpc_channel_config cc = {
        .target = target,
        .tls = o->insecure ? NULL : &o->tls,
        .insecure = o->insecure,
        .threads = 1,
    };
    return rpc_channel_create(&cc, err, errlen);
}

/* Blocking call on url; 0 with *resp on OK, else prints the failure and returns 1. */
static int call(const struct opts *o, const char *url, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
    char err[512];
    struct rpc_channel *ch = dial(o, url, err, sizeof err);
    if (!ch) {
        fprintf(stderr, "craftctl: %s\n", err);
        return 1;
    }
    struct rpc_result res;
    rpc_channel_call_msg(ch, method, req, desc, DEADLINE_MS, resp, &res);
    rpc_channel_destroy(ch);
    int rc = 0;
    if (res.status != GRPC_STATUS_OK) {
        fprintf(stderr, "craftctl: %s: %s (gRPC status %d)\n", url, res.message, res.status);
        rc = 1;
    }
    rpc_result_free(&res);
    return rc;
}

static int cmd_put(const struct opts *o, const char *key, const char *val)
{
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = (uint8_t *)val;
    req.value.len = strlen(val);
    ProtobufCMessage *resp = NULL;
    if (call(o, o->eps[0], "/etcdserverpb.KV/Put", &req.base, &etcdserverpb__put_response__descriptor,
             &resp) != 0)
        return 1;
    Etcdserverpb__PutResponse *r = (Etcdserverpb__PutResponse *)resp;
    printf("OK revision=%lld\n", (long long)(r->header ? r->header->revision : 0));
    protobuf_c_message_free_unpacked(resp, NULL);
    return 0;
}

static int cmd_get(const struct opts *o, const char *key)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    ProtobufCMessage *resp = NULL;
    if (call(o, o->eps[0], "/etcdserverpb.KV/Range", &req.base,
             &etcdserverpb__range_response__descriptor, &resp) != 0)
        return 1;
    Etcdserverpb__RangeResponse *r = (Etcdserverpb__RangeResponse *)resp;
    int rc = r->n_kvs ? 0 : 1;
    if (r->n_kvs)
        printf("%.*s\n", (int)r->kvs[0]->value.len, (const char *)r->kvs[0]->value.data);
    else
        fprintf(stderr, "craftctl: key not found\n");
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static const char *role_name(uint32_t r)
{
    static const char *names[] = {"follower", "pre-candidate", "candidate", "leader"};
    return r < 4 ? names[r] : "?";
}

static int cmd_status(const struct opts *o)
{
    int rc = 0;
    for (int i = 0; i < o->n_eps; i++) {
        Craft__Node__StatusRequest req = CRAFT__NODE__STATUS_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        if (call(o, o->eps[i], "/craft.node.Node/Status", &req.base,
                 &craft__node__status_reply__descriptor, &resp) != 0) {
            rc = 1;
            continue;
        }
        Craft__Node__StatusReply *r = (Craft__Node__StatusReply *)resp;
        printf("%s, %s, id=%016llx, %s, term=%llu, leader=%s, commit=%llu, applied=%llu, "
               "revision=%lld\n",
               o->eps[i], r->name, (unsigned long long)r->member_id, role_name(r->role),
               (unsigned long long)r->term, *r->leader_name ? r->leader_name : "none",
               (unsigned long long)r->commit_index, (unsigned long long)r->applied_index,
               (long long)r->revision);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

/* snapshot restore FILE --name N --initial-cluster C --initial-cluster-token T --data-dir D */
static int cmd_restore(int argc, char **argv)
{
    const char *file = NULL, *name = NULL, *spec = NULL, *token = NULL, *dir = NULL;
    unsigned long long quota = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(a, "--name")                    ? &name
                           : !strcmp(a, "--initial-cluster")       ? &spec
                           : !strcmp(a, "--initial-cluster-token") ? &token
                           : !strcmp(a, "--data-dir")              ? &dir
                                                                   : NULL;
        if (dst || !strcmp(a, "--quota-backend-bytes")) {
            if (!v) {
                fprintf(stderr, "craftctl: %s needs a value\n", a);
                return 2;
            }
            if (dst) {
                *dst = v;
            } else {
                char *end;
                quota = strtoull(v, &end, 10);
                if (!*v || *end || *v == '-' || quota < (1u << 20)) {
                    fprintf(stderr, "craftctl: --quota-backend-bytes wants bytes >= 1 MiB\n");
                    return 2;
                }
            }
            i++;
        } else if (a[0] == '-' || file) {
            fprintf(stderr, "craftctl: snapshot restore: unexpected '%s'\n", a);
            return 2;
        } else {
            file = a;
        }
    }
    if (!file || !name || !spec || !token || !dir) {
        fprintf(stderr, "craftctl: snapshot restore needs FILE, --name, --initial-cluster, "
                        "--initial-cluster-token and --data-dir\n");
        return 2;
    }
    char err[600];
    struct cluster c;
    if (cluster_parse(spec, token, &c, err, sizeof err) != 0) {
        fprintf(stderr, "craftctl: --initial-cluster: %s\n", err);
        return 2;
    }
    if (!cluster_find_name(&c, name)) {
        fprintf(stderr, "craftctl: --name %s is not in --initial-cluster\n", name);
        return 2;
    }
    struct snap_restore_info info;
    if (snap_restore(file, dir, quota, &info, err, sizeof err) != 0) {
        fprintf(stderr, "craftctl: snapshot restore: %s\n", err);
        return 1;
    }
    printf("restored %s into %s: revision %lld, the log starts after index %llu (term %llu)\n"
           "start the member with --name %s --data-dir %s --initial-cluster %s "
           "--initial-cluster-token %s\n",
           file, dir, (long long)info.revision, (unsigned long long)info.index,
           (unsigned long long)info.term, name, dir, spec, token);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "snapshot")) {
        if (strcmp(argv[2], "restore") != 0)
            return usage();
        return cmd_restore(argc - 3, argv + 3);
    }
    struct opts o = {0};
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--insecure")) {
            o.insecure = true;
            continue;
        }
        if (i + 1 >= argc)
            return usage();
        const char *v = argv[++i];
        if (!strcmp(f, "--endpoints")) {
            /* Split in place (argv is writable): nothing to free. */
            char *save = NULL;
            for (char *e = strtok_r(argv[i], ",", &save); e && o.n_eps < MAX_EP;
                 e = strtok_r(NULL, ",", &save))
                o.eps[o.n_eps++] = e;
        } else if (!strcmp(f, "--cacert")) {
            o.tls.ca_file = v;
        } else if (!strcmp(f, "--cert")) {
            o.tls.cert_file = v;
        } else if (!strcmp(f, "--key")) {
            o.tls.key_file = v;
        } else {
            fprintf(stderr, "craftctl: unknown flag %s\n", f);
            return usage();
        }
    }
    if (o.n_eps == 0)
        o.eps[o.n_eps++] = "https://127.0.0.1:2379";
    if (!o.insecure && !o.tls.ca_file) {
        fprintf(stderr, "craftctl: --cacert (and --cert/--key) are required, or --insecure\n");
        return 2;
    }
    if (i >= argc)
        return usage();
    const char *cmd = argv[i++];
    int nargs = argc - i;
    if (!strcmp(cmd, "put") && nargs == 2)
        return cmd_put(&o, argv[i], argv[i + 1]);
    if (!strcmp(cmd, "get") && nargs == 1)
        return cmd_get(&o, argv[i]);
    if (!strcmp(cmd, "status") && nargs == 0)
        return cmd_status(&o);
    return usage();
}
