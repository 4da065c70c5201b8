/* kv_internal.h: helpers shared by the kvstore files (not part of the contract). */
#ifndef CRAFT_SERVICES_KV_INTERNAL_H
#define CRAFT_SERVICES_KV_INTERNAL_H

#include "services/kvstore/kv_store.h"

/* Fills *err (if non-NULL) and returns -1. */
int kv_fail(struct kv_err *err, int code, const char *msg);
/* memcmp order, a proper prefix first (LMDB's default key order). */
int kv_bytes_cmp(const void *a, size_t an, const void *b, size_t bn);
/* kv_validate_txn with the op budget optional (limited = false at apply time). */
int kv_validate_txn_limits(const Etcdserverpb__TxnRequest *r, unsigned max_txn_ops, bool limited,
                           struct kv_err *err);

/* kv_mark.c: kv.state, which says whether the store may hold writes not yet synced (kv_store.h
 * "Durability"). */
enum kv_mark { KV_MARK_NONE, KV_MARK_CLEAN, KV_MARK_DIRTY, KV_MARK_BAD };
/* This boot of the machine (/proc/sys/kernel/random/boot_id). 0 or -1. */
int kv_boot_id(char *buf, size_t len);
/* KV_MARK_DIRTY fills boot with the boot id it names; BAD = unreadable or not ours. */
enum kv_mark kv_mark_read(const char *dir, char *boot, size_t len);
/* fsync of a directory, so that a rename in it is durable. 0 or an errno. */
int kv_sync_dir(const char *dir);
/* Durably replaces the mark: "dirty since boot" (boot non-NULL) or "clean". 0 or an errno. */
int kv_mark_write(const char *dir, const char *boot);

#endif
