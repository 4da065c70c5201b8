/* member_file.h: <data-dir>/member, who this member is, recorded when its data directory is first
 * used - its name, member id, cluster id and the member table it started from.
 *
 * Why: a member's id and the cluster id derive from --name, --initial-cluster and
 * --initial-cluster-token only for the members that bootstrapped the cluster. A member that
 * joined later (--initial-cluster-state existing) got its id from the running cluster's table
 * (etcd's MemberAdd by URL), and after membership changes an operator may restart an original
 * member with an --initial-cluster that lists other members (which would derive another cluster
 * id). So the identity is read from the data directory on every restart, as etcd reads it from
 * its WAL metadata, and flags that contradict it (another --name) are refused.
 *
 * What it promises:
 * - member_file_write() replaces the file atomically: a temporary file written and fsync'ed,
 *   renamed over the old one, the directory fsync'ed. A crash leaves the old file or the new.
 * - member_file_read() accepts exactly what member_file_write() writes: a versioned text file
 *   whose last line is a CRC-32C of everything before it; the table must decode
 *   (services/cluster.h), carry the recorded cluster id and hold the recorded member. Anything
 *   else is refused with the file's path and the reason.
 *
 * Format, version 1 (text, one field per line, in this order; ids are 16 lowercase hex digits):
 *   craft-member 1
 *   name <name>
 *   member-id <id>
 *   cluster-id <id>
 *   table <cluster_encode() bytes as lowercase hex>
 *   crc32c <8 lowercase hex digits: CRC-32C of every byte before this line>
 */
#ifndef CRAFT_SERVICES_MEMBER_FILE_H
#define CRAFT_SERVICES_MEMBER_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "services/cluster.h"

#define MEMBER_FILE_NAME "member"

struct member_file {
    char name[CLUSTER_NAME_MAX];
    uint64_t member_id;
    struct cluster table; /* table.id is the cluster id */
};

/* 0, or -1 with err filled (a bad record: name, id not in the table; or an I/O error). */
int member_file_write(const char *data_dir, const struct member_file *m, char *err, size_t errlen);
/* 0 (*out filled), 1 when there is no such file, or -1 with err naming the file and the reason. */
int member_file_read(const char *data_dir, struct member_file *out, char *err, size_t errlen);

#endif
