/* cluster.h: a craft cluster's members, as etcd's flags give them and membership changes edit
 * them.
 *
 * What it promises:
 * - cluster_parse() turns etcd's `--initial-cluster` syntax (`name=https://host:port,...`) into a
 *   validated member table, or a clear error naming the bad part: empty or duplicate names, a
 *   URL that is not http(s)://host:port, a port out of range, two members on one peer
 *   address, more than CLUSTER_MAX_MEMBERS.
 * - Member ids are stable and derived, like etcd's: the first 8 bytes of SHA-256 over the
 *   member's name and the cluster token, never 0. The cluster id is derived from the sorted
 *   member ids and the token, so members started with a different --initial-cluster or token
 *   refuse each other. The cluster id is fixed at creation: membership changes keep it.
 * - Unnamed members: etcd's MemberAdd carries only peer URLs, so a member added that way is in
 *   the table with the name "" (not yet published) and the id cluster_member_id_url(its peer
 *   URL, token) until it starts and its name is bound (cluster_set_name; etcd's "publish").
 *   cluster_find_name() never matches "", so a certificate can never name an unnamed member.
 * - The member table travels as data (each configuration-change log entry carries the whole
 *   table after the change, and so do snapshots). cluster_encode() writes it in a compact
 *   versioned format (below); cluster_decode() reads bytes from outside and accepts exactly
 *   what cluster_encode() can write: every length, count, name, id and URL is checked, the URL
 *   must be in canonical form, nothing may follow the last member. So an accepted encoding
 *   re-encodes to the same bytes, and anything else gets a clear error, never a crash or a
 *   read past `len`.
 * - A valid table (cluster_check()) has 1..CLUSTER_MAX_MEMBERS members, a nonzero cluster id,
 *   nonzero distinct member ids, names that are valid or "" (unnamed; any number of those),
 *   distinct non-empty names and distinct peer addresses (host, compared ignoring case, and
 *   port; the scheme is not compared). cluster_parse(),
 *   cluster_decode() and the edits below only ever produce valid tables.
 * - Order: members stay in a stable order, not sorted by id: cluster_parse() keeps the order of
 *   --initial-cluster, cluster_add() appends, cluster_remove() closes the gap keeping the order
 *   of the rest, cluster_update_peer_url() edits in place, and the encoding keeps the order.
 *   Every member applying the same log therefore has the same table, index for index.
 *   cluster_remove() moves entries: pointers into members[] do not survive it.
 * - The edits (cluster_add, cluster_remove, cluster_update_peer_url) validate as etcd's
 *   ValidateConfigurationChange does and leave the table unchanged when they refuse. Where
 *   etcd has an error for the case, err is etcd's string word for word (etcd's clients match
 *   on the text) and cluster_strerror(code) returns the same string.
 *
 * Encoding, format version 1, integers little-endian:
 *   u8  version (1)
 *   u64 cluster id (nonzero)
 *   u8  member count (1..CLUSTER_MAX_MEMBERS)
 *   per member, in table order:
 *     u64 id (nonzero)
 *     u8  name length (0..CLUSTER_NAME_MAX-1; 0 = unnamed), then the name (letters, digits,
 *         - _ .)
 *     u16 URL length (1..CLUSTER_URL_MAX-1), then the peer URL as cluster_url_string() writes
 *         it ("https://host:port", "https://[::1]:port", or http://)
 *   nothing after the last member. No checksum: log entries and snapshots carry their own.
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
    bool promote; /* a learner added as a voter: the leader promotes it once in sync */
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

/* The member named `name`; NULL for "" (unnamed members are never found by name). */
const struct cluster_member *cluster_find_name(const struct cluster *c, const char *name);
const struct cluster_member *cluster_find_id(const struct cluster *c, uint64_t id);
/* The member listening on u's address (host ignoring case, and port; not the scheme), or NULL. */
const struct cluster_member *cluster_find_url(const struct cluster *c, const struct cluster_url *u);
/* The member a verified certificate names: its CN or any SAN equals a (non-empty) member name.
 * NULL if none does. */
const struct cluster_member *cluster_find_cert(const struct cluster *c, const char *cn,
                                               const char (*sans)[256], int nsans);

/* A named member's id: SHA-256 over "craft-member", the name (with its NUL) and the token;
 * the first 8 bytes, big-endian, never 0 (1 instead). 0 only if OpenSSL cannot hash. */
uint64_t cluster_member_id(const char *name, const char *token);
/* An unnamed member's id (one added by peer URL, as etcd's MemberAdd): SHA-256 over
 * "craft-member-url" (its NUL included, so no name can produce the same input), the canonical
 * peer URL (cluster_url_string(), NUL included) and the token; the first 8 bytes, big-endian,
 * never 0. peer_url is canonicalized first, so "https://H:2380/" and "https://H:2380" give the
 * same id; 0 if it does not parse (or OpenSSL cannot hash). The id depends only on the URL and
 * the token: a member removed and added back at the same URL gets the same id again, so a
 * caller that wants a fresh id then should vary the token it passes. */
uint64_t cluster_member_id_url(const char *peer_url, const char *token);

/* Error codes (always negative; err, where given, says more). etcd's gRPC code for each is
 * given so the Cluster service can answer as etcd does. */
enum {
    CLUSTER_EINVAL = -1,     /* bad --initial-cluster or URL; a table cluster_check() refuses */
    CLUSTER_ENOTFOUND = -2,  /* "etcdserver: member not found" (NotFound) */
    CLUSTER_EEXIST = -3,     /* "etcdserver: member ID already exist" (FailedPrecondition) */
    CLUSTER_EURLEXISTS = -4, /* "etcdserver: Peer URLs already exists" (FailedPrecondition) */
    CLUSTER_EBADURL = -5,    /* "etcdserver: given member URLs are invalid" (InvalidArgument) */
    CLUSTER_EBADNAME = -6,   /* craft's own: a name etcd has no rule for (InvalidArgument) */
    CLUSTER_EFULL = -7,      /* craft's own: already CLUSTER_MAX_MEMBERS (FailedPrecondition) */
    CLUSTER_ELAST = -8,      /* craft's own: removing the only member (FailedPrecondition) */
    CLUSTER_EBADMSG = -9,    /* cluster_decode(): malformed bytes */
    CLUSTER_ENOMEM = -10,    /* out of memory (or OpenSSL could not hash) */
};

/* The fixed string for a code: etcd's exact message for ENOTFOUND, EEXIST, EURLEXISTS and
 * EBADURL; a short "craft: ..." one otherwise. */
const char *cluster_strerror(int code);

/* 0 if c is a valid table (see above), else CLUSTER_EINVAL and err says what is wrong. */
int cluster_check(const struct cluster *c, char *err, size_t errlen);

/* Encodes a valid table into a new malloc'ed buffer (*out, *len; the caller frees it).
 * CLUSTER_EINVAL if cluster_check() refuses c, CLUSTER_ENOMEM; *out untouched on error. */
int cluster_encode(const struct cluster *c, uint8_t **out, size_t *len);
/* Decodes len bytes from outside. 0, or CLUSTER_EBADMSG with err "cluster table: <reason>" in
 * printable ASCII (or CLUSTER_ENOMEM). *out is written only on success. */
int cluster_decode(const uint8_t *p, size_t len, struct cluster *out, char *err, size_t errlen);

/* Adds member `name` with peer URL `peer_url` and the id cluster_member_id(name, token), as
 * c->members[c->n - 1]. Checked in this order: CLUSTER_EBADNAME (empty, too long, or a
 * character other than letters, digits, - _ .); CLUSTER_EBADURL (not http(s)://host:port);
 * CLUSTER_EEXIST (the id is in the table; or, with a craft message, the name - possible only
 * if the table's ids came from another token); CLUSTER_EURLEXISTS (another member has that
 * host and port); CLUSTER_EFULL. */
int cluster_add(struct cluster *c, const char *name, const char *peer_url, const char *token,
                char *err, size_t errlen);
/* Adds an unnamed member (etcd's MemberAdd: peer URLs only) with peer URL `peer_url` and the id
 * cluster_member_id_url(peer_url, token), as c->members[c->n - 1]. CLUSTER_EBADURL,
 * CLUSTER_EEXIST (that id is in the table), CLUSTER_EURLEXISTS, CLUSTER_EFULL, as cluster_add. */
int cluster_add_unnamed(struct cluster *c, const char *peer_url, const char *token, char *err,
                        size_t errlen);
/* Binds `name` to member `id` (etcd's publish of a started member's attributes): 0 if it is
 * unnamed (or already has exactly that name); CLUSTER_ENOTFOUND; CLUSTER_EBADNAME (not a valid
 * name); CLUSTER_EEXIST (another member has that name, or this one another name). */
int cluster_set_name(struct cluster *c, uint64_t id, const char *name, char *err, size_t errlen);
/* Removes member `id`: CLUSTER_ENOTFOUND, or CLUSTER_ELAST for the only member (Raft cannot
 * have an empty configuration). */
int cluster_remove(struct cluster *c, uint64_t id, char *err, size_t errlen);
/* Gives member `id` a new peer URL: CLUSTER_EBADURL, CLUSTER_ENOTFOUND, or CLUSTER_EURLEXISTS
 * if another member has that host and port (its own current URL is allowed). */
int cluster_update_peer_url(struct cluster *c, uint64_t id, const char *peer_url, char *err,
                            size_t errlen);

#endif
