#!/usr/bin/env python3
"""Writes the seed corpus for the KV snapshot payload fuzzer (tests/fuzz/corpus/kv_snap/).

A second encoder of the format in services/kvstore/kv_snap.h (and docs/kv.md "Snapshots"),
written from the spec, so kv_snap_corpus_check also checks the C decoder against another
reading of it. Valid payloads and ones that each break one rule. Run from the repository root:
    python3 tests/fuzz/make_kv_snap_corpus.py
"""
import os
import struct

from make_wal_corpus import crc32c  # CRC-32C, the same checksum


def header(index, term, rev, compact, version=1, flags=0, magic=b"CRKVSNAP"):
    return magic + struct.pack("<IIQQqq", version, flags, index, term, rev, compact)


def record(key, create, mod, version, value=b"", lease=0):
    return (struct.pack("<II", len(key), len(value)) + key +
            struct.pack("<qqqq", create, mod, version, lease) + value)


def lease(lid, ttl, remaining=0, pad=0):
    """A version 3 lease record: key length 0, value length 0, then id, TTL, remaining, 0."""
    return struct.pack("<IIqqqq", 0, 0, lid, ttl, remaining, pad)


def auth(state):
    """A version 4 auth record: key length 0, value length n > 0, then the n state bytes."""
    return struct.pack("<II", 0, len(state)) + state


def payload(head, recs, count=None, pad=0):
    body = head + b"".join(recs) + b"CRKVEND1" + struct.pack("<Q", len(recs) if count is None
                                                             else count)
    return body + struct.pack("<II", crc32c(body), pad)


def main():
    out = "tests/fuzz/corpus/kv_snap"
    os.makedirs(out, exist_ok=True)
    h = header(42, 3, 9, 2)
    three = [record(b"a", 1, 4, 2, b"one"), record(b"ab", 2, 2, 1), record(b"b", 5, 9, 5, b"five")]
    valid = payload(h, three)
    seeds = {
        "empty_store": payload(header(0, 0, 0, 0), []),
        "three_keys": valid,
        "term_unknown": payload(header(7, 0, 1, 0), [record(b"k", 1, 1, 1, b"v")]),
        "binary_keys_and_value": payload(
            header(100, 4, 300, 300),
            [record(b"\x00", 1, 1, 1, bytes(range(256))),
             record(b"\x00\x00", 2, 300, 299, b"x" * 2000),
             record(b"\xff" * 511, 7, 8, 2)]),
        "bad_magic": payload(header(42, 3, 9, 2, magic=b"CRKVSNAQ"), three),
        "version_5": payload(header(42, 3, 9, 2, version=5), three),
        # version 3: the history (puts may carry a lease), then the leases in unsigned order
        "leases": payload(
            header(60, 6, 4, 0, version=3),
            [record(b"a", 1, 1, 1, b"x", lease=7), record(b"b", 2, 2, 1, lease=-3),
             record(b"a", 0, 3, 0), record(b"c", 4, 4, 1, lease=7),
             lease(7, 30, 12), lease(100, 9000000000), lease(-3, 5)]),
        "leases_only": payload(header(0, 0, 0, 0, version=3), [lease(1, 1)]),
        # version 4: then the auth state's bytes (the store checks them, not the codec)
        "auth": payload(
            header(61, 6, 1, 0, version=4),
            [record(b"a", 1, 1, 1, b"x"), lease(7, 30), auth(b"\x08\x01\x10\x05")]),
        "auth_then_lease": payload(
            header(61, 6, 1, 0, version=4), [auth(b"\x08\x01"), lease(7, 30)]),
        "auth_in_version_3": payload(header(61, 6, 1, 0, version=3), [auth(b"\x08\x01")]),
        "lease_before_key": payload(
            header(60, 6, 4, 0, version=3), [lease(7, 30), record(b"a", 1, 1, 1)]),
        "leases_out_of_order": payload(
            header(60, 6, 4, 0, version=3), [lease(-3, 5), lease(7, 30)]),
        "lease_id_zero": payload(header(60, 6, 4, 0, version=3), [lease(0, 30)]),
        "lease_ttl_too_large": payload(header(60, 6, 4, 0, version=3), [lease(1, 9000000001)]),
        "lease_negative_remaining": payload(header(60, 6, 4, 0, version=3), [lease(1, 30, -1)]),
        "lease_padding": payload(header(60, 6, 4, 0, version=3), [lease(1, 30, 0, 1)]),
        "lease_with_value": payload(
            header(60, 6, 4, 0, version=3),
            [struct.pack("<II", 0, 1) + struct.pack("<qqqq", 1, 30, 0, 0) + b"v"]),
        # version 2: the history in write order; version 0 = a deletion (tombstone)
        "history": payload(
            header(50, 5, 7, 2, version=2),
            [record(b"b", 1, 1, 1, b"old"), record(b"a", 2, 2, 1, b"x"),
             record(b"b", 1, 3, 2, b"new"), record(b"a", 0, 4, 0),
             record(b"c", 5, 5, 1, b"t1"), record(b"d", 5, 5, 1, b"t2"), record(b"c", 0, 5, 0),
             record(b"a", 7, 7, 1, b"again")]),
        "history_out_of_order": payload(
            header(50, 5, 7, 2, version=2), [record(b"a", 3, 3, 1), record(b"b", 2, 2, 1)]),
        "history_tombstone_with_value": payload(
            header(50, 5, 7, 2, version=2), [record(b"a", 0, 3, 0, b"v")]),
        "history_tombstone_past_revision": payload(
            header(50, 5, 7, 2, version=2), [record(b"a", 0, 8, 0)]),
        "compacted_past_revision": payload(header(1, 1, 3, 4), []),
        "keys_out_of_order": payload(h, [three[1], three[0]]),
        "key_too_long": payload(h, [record(b"k" * 512, 1, 1, 1)]),
        "revision_past_header": payload(h, [record(b"a", 1, 10, 1)]),
        "version_too_high": payload(h, [record(b"a", 2, 3, 3)]),
        "lease_set": payload(h, [record(b"a", 1, 1, 1, lease=5)]),
        "count_wrong": payload(h, three, count=2),
        "crc_wrong": valid[:-8] + struct.pack("<II", crc32c(valid[:-8]) ^ 1, 0),
        "byte_after_end": valid + b"\x00",
        "truncated_in_record": valid[:70],
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
