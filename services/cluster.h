/* cluster.h: the static description of a craft cluster, as etcd's flags give it.
 *
 * What it promises:
 * - cluster_parse() turns etcd's `--initial-cluster` syntax (`name=https://host:port,...`) into a
 *   validated member table, or a clear error naming the bad part: empty or duplicate names, a
 *   URL that is not http(s)://host:port, a port out of range, two members on one peer
 *   address, more than CLUSTER_MAX_MEMBERS.
 * - Member ids are stable and derived, like etcd's: the first 8 bytes of SHA-256 over the
 *   member's name and the cluster token, never 0. The cluster id is derived from the sorted
 *   member ids and the token, so members started with a different --initial-cluster or token
 *   refuse each other.
 */
#ifndef CRAFT_SERVICES_CLUSTER_H
#define CRAFT_SERVICES_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLUSTER_MAX_MEMBERS 64
#define CLUSTER_NAME_MAX 64
#define CLUSTER_HOST_MAX 256
/* Room for cluster_url_string(): "https://[" host "]:65535" and the NUL. */
#define CLUSTER_URL_MAX (CLUSTER_HOST_MAX + 20)

struct cluster_url {
    bool tls;                     /* https:// */
    char host[CLUSTER_HOST_MAX];  /* a DNS name or an IP literal (IPv6 without brackets) */
    int port;
};

struct cluster_member {
    uint64_t id;
    char name[CLUSTER_NAME_MAX];
    struct cluster_url peer_url;
};

struct cluster {
    uint64_t id;
    size_t n;
    struct cluster_member members[CLUSTER_MAX_MEMBERS];
};

/* Parses "scheme://host:port" (a trailing "/" is allowed). 0 or -1 with err filled. */
int cluster_parse_url(const char *url, struct cluster_url *out, char *err, size_t errlen);
/* "host:port" for gRPC (IPv6 hosts in brackets). */
void cluster_url_target(const struct cluster_url *u, char *buf, size_t len);
/* The canonical URL, "https://host:port" (or http://; IPv6 hosts in brackets, no trailing "/",
 * the port without leading zeros): cluster_parse_url() reads it back to the same struct. buf
 * should hold CLUSTER_URL_MAX bytes. */
void cluster_url_string(const struct cluster_url *u, char *buf, size_t len);

/* Parses --initial-cluster with --initial-cluster-token `token`. 0 or -1 with err filled. */
int cluster_parse(const char *spec, const char *token, struct cluster *out, char *err,
                  size_t errlen);

const struct cluster_member *cluster_find_name(const struct cluster *c, const char *name);
const struct cluster_member *cluster_find_id(const struct cluster *c, uint64_t id);
/* The member a verified certificate names: its CN or any SAN equals a member's name. NULL if
 * none does. */
const struct cluster_member *cluster_find_cert(const struct cluster *c, const char *cn,
                                               const char (*sans)[256], int nsans);

uint64_t cluster_member_id(const char *name, const char *token);


#endif
