/* node_members.c: which peers this node has seen run with durable Raft state, remembered on disk
 * so that a peer that lost its disk cannot come back as itself unnoticed (raft_node_has_run).
 *
 * A message proves its sender has durable state when the sender may only send it after a write
 * was durable: a granted vote (votedFor on disk, Figure 2), an acknowledgement of entries (the
 * entries on disk), and anything a leader sends (it counted its own vote only once durable). The
 * first such message from a peer creates an empty marker file `member-<id>.ran` in the data
 * directory (created, then the directory synced), once per peer for the directory's lifetime. A
 * restart reads the markers back from the file names - of every id, not only the configured
 * peers: a former member may be added again - and nothing else is stored, so there is no file
 * content to parse.
 *
 * In memory the markers are a fixed table by id (n->ran, NODE_RAN_SLOTS) read and extended
 * without a lock: a slot is claimed by a compare-and-swap of its id from 0, always the first
 * free slot, and never given back, so a scan that reaches a free slot has seen every id and two
 * threads adding the same id meet in the same slot. Only a peer's messages create its marker
 * (`member`, kept by node_peers_set); any id's marker answers raft_node_has_run. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "raft/node/node_internal.h"

#define RAN_PREFIX "member-"
#define RAN_SUFFIX ".ran"

enum { RAN_UNKNOWN = 0, RAN_WRITING = 1, RAN_KNOWN = 2 };

/* The slot of `id`, claiming a free one for it if `add`; NULL if absent (or the table is full). */
static struct node_ran *ran_slot(struct raft_node *n, uint64_t id, bool add)
{
    if (!id)
        return NULL; /* 0 marks a free slot */
    for (size_t i = 0; i < NODE_RAN_SLOTS; i++) {
        struct node_ran *r = &n->ran[i];
        uint64_t cur = atomic_load(&r->id);
        if (cur == id)
            return r;
        if (cur)
            continue;
        if (!add)
            return NULL;
        if (atomic_compare_exchange_strong(&r->id, &cur, id) || cur == id)
            return r;
    }
    if (add)
        node_warn(n, "more than %d members seen: whether %016" PRIx64 " has run is not kept",
                 NODE_RAN_SLOTS, id);
    return NULL;
}

void node_members_set_peer(struct raft_node *n, uint64_t id, bool member)
{
    struct node_ran *r = ran_slot(n, id, member);
    if (r)
        atomic_store(&r->member, member);
}

/* "member-0123456789abcdef.ran" -> id; false for any other name. */
static bool parse_name(const char *name, uint64_t *id)
{
    size_t pl = strlen(RAN_PREFIX), sl = strlen(RAN_SUFFIX);
    if (strlen(name) != pl + 16 + sl || strncmp(name, RAN_PREFIX, pl) != 0 ||
        strcmp(name + pl + 16, RAN_SUFFIX) != 0)
        return false;
    uint64_t v = 0;
    for (size_t i = pl; i < pl + 16; i++) {
        char ch = name[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *id = v;
    return v != 0;
}

int node_members_load(struct raft_node *n, char *err, size_t errlen)
{
    DIR *d = opendir(n->data_dir);
    if (!d) {
        snprintf(err, errlen, "%s: opendir: %s", n->data_dir, strerror(errno));
        return RAFT_NODE_EIO;
    }
    /* The configured peers take their slots first, so that former members' markers cannot
     * crowd them out of the table. */
    for (size_t i = 0; i < n->cfg.n_peers; i++)
        if (n->cfg.peers[i] != n->cfg.id)
            ran_slot(n, n->cfg.peers[i], true);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t id;
        struct node_ran *r;
        if (parse_name(de->d_name, &id) && id != n->cfg.id && (r = ran_slot(n, id, true)))
            atomic_store(&r->state, RAN_KNOWN);
    }
    closedir(d);
    return 0;
}

static bool proves_durable_state(const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_VOTE_RESP: return m->granted;
    case RAFT_MSG_APPEND_RESP: return !m->reject && m->match_index > 0;
    case RAFT_MSG_APPEND:
    case RAFT_MSG_SNAPSHOT: return true;
    default: return false;
    }
}

void node_members_note(struct raft_node *n, const struct raft_msg *m)
{
    if (!proves_durable_state(m))
        return;
    struct node_ran *r = m->from != n->cfg.id ? ran_slot(n, m->from, false) : NULL;
    if (!r || !atomic_load(&r->member))
        return; /* not a peer (any more) */
    uint8_t expect = RAN_UNKNOWN;
    if (!atomic_compare_exchange_strong(&r->state, &expect, RAN_WRITING))
        return; /* known, or another thread is writing it */
    char name[64], path[4400];
    snprintf(name, sizeof name, RAN_PREFIX "%016" PRIx64 RAN_SUFFIX, m->from);
    snprintf(path, sizeof path, "%s/%s", n->data_dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    int ok = fd >= 0 && fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    int dfd = ok ? open(n->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    ok = dfd >= 0 && fsync(dfd) == 0;
    if (dfd >= 0)
        close(dfd);
    if (!ok) {
        node_warn(n, "cannot record that member %016" PRIx64 " has run (%s: %s); will retry",
                 m->from, path, strerror(errno));
        atomic_store(&r->state, RAN_UNKNOWN);
        return;
    }
    atomic_store(&r->state, RAN_KNOWN);
}

bool raft_node_has_run(struct raft_node *n, uint64_t id)
{
    struct node_ran *r = n && id ? ran_slot(n, id, false) : NULL;
    return r && atomic_load(&r->state) == RAN_KNOWN;
}
