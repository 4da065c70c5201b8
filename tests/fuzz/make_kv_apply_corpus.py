#!/usr/bin/env python3
"""Writes the seed corpus for the apply fuzzer (tests/fuzz/corpus/kv_apply/).

An input is records [op][len][len bytes] (see kv_apply_fuzz.c): op % 8 = 0 takes the bytes
as the entry itself (here: craft.kv.Command messages encoded by hand from kvcmd.proto and
etcd's rpc.proto, valid and not), 1-7 build a Put, DeleteRange, Txn, LeaseGrant,
LeaseRevoke, Compact or LeaseCheckpoint from the bytes (a raw record of length 255 runs to
the end of the input); op & 8 applies what came before as
one batch first; the higher bits vary the built command (lease, prev_kv, nesting, ...). Run
from the repository root:
    python3 tests/fuzz/make_kv_apply_corpus.py
"""
import os


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f(num, v):
    if isinstance(v, int):
        return varint(num << 3) + varint(v)
    if isinstance(v, str):
        v = v.encode()
    return varint(num << 3 | 2) + varint(len(v)) + v


def rec(op, data=b""):
    assert len(data) < 255
    return bytes([op, len(data)]) + data


def raw(cmd):
    return rec(0, cmd)


# craft.kv.Command: put 1, delete_range 2, txn 3, compaction 4, lease_grant 5,
# lease_revoke 6, lease_checkpoint 7, the auth commands 8..18, who asked 100.
def c_put(key, val=b"v", lease=0):
    return f(1, f(1, key) + f(2, val) + (f(3, lease) if lease else b""))


def c_del(key, end=b""):
    return f(2, f(1, key) + (f(2, end) if end else b""))


def c_txn(t):
    return f(3, t)


def c_compact(rev):
    return f(4, f(1, rev))


def c_grant(lid, ttl):
    return f(5, f(1, ttl) + f(2, lid))


def c_revoke(lid):
    return f(6, f(1, lid))


def c_checkpoint(pairs):
    return f(7, b"".join(f(1, f(1, i) + f(2, t)) for i, t in pairs))


def txn(compares=(), success=(), failure=()):
    return (b"".join(f(1, c) for c in compares) + b"".join(f(2, o) for o in success) +
            b"".join(f(3, o) for o in failure))


def nested(depth):
    t = txn(success=[f(2, f(1, b"kd") + f(2, b"v"))])
    for _ in range(depth):
        t = txn(success=[f(4, t)])
    return t


SEEDS = {
    "raw_put": raw(c_put(b"ka")),
    "raw_put_then_delete": raw(c_put(b"ka")) + raw(c_put(b"kb")) + raw(c_del(b"ka", b"kc")),
    "raw_lease_cycle": (raw(c_grant(3, 10)) + raw(c_put(b"kl", lease=3)) +
                        raw(c_checkpoint([(3, 4)])) + raw(c_revoke(3))),
    "raw_put_unknown_lease": raw(c_put(b"kx", lease=99)),
    "raw_grant_zero": raw(c_grant(0, 10)),
    "raw_grant_huge_ttl": raw(c_grant(5, 9000000001)),
    "raw_compact_future": raw(c_compact(1000)),
    "raw_compact": raw(c_put(b"k1")) + raw(c_put(b"k1")) + raw(c_compact(1)),
    "raw_txn": raw(c_txn(txn([f(1, 0) + f(2, 1) + f(3, b"ka") + f(4, 0)],
                             [f(2, f(1, b"ka") + f(2, b"1"))],
                             [f(1, f(1, b"ka"))]))),
    "raw_empty": raw(b""),
    "raw_garbage": raw(b"\xff\xff\xff"),
    "raw_unknown_op": raw(f(12, b"x")),
    "raw_empty_put": raw(f(1, b"")),
    "raw_bad_enum_compare": raw(c_txn(txn([f(1, 9) + f(3, b"k")]))),
    "raw_overlong_field0": raw(f(1, f(1, b"k") + b"\x80\x00\x01")),
    "raw_duplicate_txn": raw(c_txn(txn(success=[f(2, f(1, b"k")), f(2, f(1, b"k"))]))),
    "built_mix": (rec(4, b"\x02\x0a") + rec(1 | 16, b"\x02ab") + rec(3, b"\x00\x01ab") +
                  rec(2 | 16, b"a") + rec(6 | 8, b"\x01") + rec(7 | 32, b"\x02\x03") +
                  rec(5, b"\x02")),
    "built_batches": (rec(1, b"abc") + rec(1 | 8, b"abd") + rec(2 | 16 | 64 | 8, b"a") +
                      rec(3 | 16 | 8, b"\x11\x02abc")),
    "built_txn_nested_lease": rec(4, b"\x01\x05") + rec(3 | 16 | 32 | 64, b"\x13\x01xyz"),
    "built_compact_then_range": (rec(1, b"a1") + rec(1, b"a1") + rec(6 | 8, b"\x01") +
                                 rec(3 | 64 | 8, b"\x00\x01a1")),
    "built_grant_bad": rec(4 | 16, b"\x04\x01") + rec(4 | 32, b"\x01\xff"),
}
# Auth (kvcmd.proto fields 8..18, AuthInfo 100): set up root, a role and a user, enable auth,
# then writes that say who asked: denied, allowed, and one from nobody.
def who(user=None):
    return f(100, f(1, user) if user is not None else f(2, 1))


SEEDS["auth_cycle"] = (
    raw(f(10, f(1, b"root") + f(3, f(1, 1)))) + raw(f(13, f(1, b"root") + f(2, b"root"))) +
    raw(f(10, f(1, b"u"))) + raw(f(15, f(1, b"r"))) + raw(f(13, f(1, b"u") + f(2, b"r"))) +
    raw(f(17, f(1, b"r") + f(2, f(1, 2) + f(2, b"a") + f(3, b"c")))) +
    raw(f(8, b"")) + raw(c_put(b"b1") + who(b"u")) + raw(c_put(b"z") + who(b"u")) +
    raw(c_put(b"b2") + who()) + raw(c_grant(4, 10)) + raw(c_put(b"zl", lease=4) + who(b"root")) +
    raw(c_revoke(4) + who(b"u")) + raw(c_compact(1) + who(b"u")) +
    raw(f(16, f(1, b"r")) + who(b"u")) + raw(f(16, f(1, b"r")) + who(b"root")) +
    raw(f(9, b"") + who(b"root")))
# What the fuzzer found: a first auth command on the empty state (no users, no roles) passed
# NULL to memcpy for the empty arrays (UBSan).
SEEDS["regress-auth-empty-memcpy"] = bytes.fromhex("00094a070a026b321201 0a070a026b7aff01".replace(" ", ""))
# A raw record of length byte 255 runs to the end of the input: long entries go last.
SEEDS["raw_txn_deep_256"] = rec(1, b"a") + bytes([0, 255]) + c_txn(nested(255))
SEEDS["raw_txn_deep_257"] = bytes([0, 255]) + c_txn(nested(257))


def main():
    d = os.path.join("tests", "fuzz", "corpus", "kv_apply")
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), d))


if __name__ == "__main__":
    main()
