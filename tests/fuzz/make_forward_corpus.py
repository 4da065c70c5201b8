#!/usr/bin/env python3
"""Writes the seed corpus for the forwarding fuzzer (tests/fuzz/corpus/forward/).

Each seed is one selector byte - even: the leader's side, a follower's ForwardBatch with
byte // 2 % 18 forwards already in flight; odd: the follower's side, the leader's
ForwardReplyBatch answering requests of kind byte // 2 % 7 (kv_req.h: Put, DeleteRange, Txn,
Compact, Range, LeaseGrant, LeaseRevoke) - and then the message, encoded here by hand from
craft's raftpb.proto and kvcmd.proto and etcd's rpc.proto with the protobuf wire format.
Batches carry cluster id 0x1234; the follower has forwards 2..11 waiting (forward_fuzz.c).
Run from the repository root:
    python3 tests/fuzz/make_forward_corpus.py
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


def leader(in_flight, body):
    return bytes([2 * in_flight]) + body


def follower(kind, body):
    return bytes([2 * kind + 1]) + body


def batch(items, cluster=0x1234):
    return f(1, cluster) + b"".join(f(2, f(1, i) + f(2, c)) for i, c in items)


def reply(items):
    """items: (id, code, message, result, index)"""
    out = b""
    for i, code, msg, res, idx in items:
        it = f(1, i) + (f(2, code) if code else b"") + (f(3, msg) if msg else b"")
        it += (f(4, res) if res else b"") + (f(5, idx) if idx else b"")
        out += f(1, it)
    return out


HEADER = f(1, f(3, 7))  # ResponseHeader{revision: 7}
KV = f(1, b"k") + f(2, 3) + f(3, 7) + f(4, 2) + f(5, b"v")
PUT_CMD = f(1, f(1, b"k") + f(2, b"v"))


def result(resp_field=None, resp=b"", code=0, msg="", rev=7):
    b = (f(1, code) if code else b"") + (f(2, msg) if msg else b"")
    if resp_field:
        b += f(resp_field, resp)
    return b + f(7, rev)


def deep_txn_resp(depth):
    t = HEADER
    for _ in range(depth):
        t = f(3, f(4, t))  # TxnResponse.responses -> ResponseOp.response_txn
    return t


SEEDS = {
    "batch_one": leader(0, batch([(1, PUT_CMD)])),
    "batch_many": leader(3, batch([(i, PUT_CMD) for i in range(5)])),
    "batch_full": leader(15, batch([(1, PUT_CMD), (2, PUT_CMD)])),
    "batch_other_cluster": leader(0, batch([(1, PUT_CMD)], cluster=0x9999)),
    "batch_no_cluster": leader(0, f(2, f(1, 1) + f(2, PUT_CMD))),
    "batch_empty": leader(0, batch([])),
    "batch_big_command": leader(0, batch([(1, f(1, f(1, b"k") + f(2, b"v" * 1100)))])),
    "batch_bad_command": leader(0, batch([(1, b"\xff\xff"), (2, b"")])),
    "batch_deep_command": leader(0, batch([(1, f(3, deep_txn_resp(40)))])),
    "batch_truncated": leader(0, batch([(1, PUT_CMD)])[:-3]),
    "reply_put": follower(0, reply([(2, 0, "", result(3, HEADER + f(2, KV)), 9)])),
    "reply_error": follower(0, reply([(3, 9, "etcdserver: too many requests", b"", 0)])),
    "reply_result_error": follower(0, reply([(4, 0, "", result(code=5, msg="lease not found"), 9)])),
    "reply_delete": follower(1, reply([(5, 0, "", result(4, HEADER + f(2, 1) + f(3, KV)), 9)])),
    "reply_txn": follower(2, reply([(6, 0, "", result(5, HEADER + f(2, 1) + f(3, f(2, HEADER))), 9)])),
    "reply_compact": follower(3, reply([(7, 0, "", result(6, HEADER), 9)])),
    "reply_grant": follower(5, reply([(8, 0, "", result(8, HEADER + f(2, 5) + f(3, 10)), 9)])),
    "reply_revoke": follower(6, reply([(9, 0, "", result(9, HEADER), 9)])),
    "reply_wrong_kind": follower(0, reply([(10, 0, "", result(6, HEADER), 9)])),
    "reply_no_header": follower(0, reply([(11, 0, "", result(3, b""), 9)])),
    "reply_twice_and_stale": follower(0, reply([(2, 0, "", result(3, HEADER), 1),
                                                (2, 0, "", result(3, HEADER), 1),
                                                (0, 0, "", result(3, HEADER), 1),
                                                (18, 0, "", result(3, HEADER), 1),
                                                (99, 0, "", result(3, HEADER), 1)])),
    "reply_bad_result": follower(0, reply([(2, 0, "", b"\x0a\x09\x01", 1)])),
    "reply_txn_deep_256": follower(2, reply([(2, 0, "", result(5, deep_txn_resp(256)), 1)])),
    "reply_txn_deep_257": follower(2, reply([(2, 0, "", result(5, deep_txn_resp(257)), 1)])),
    "reply_garbage": follower(0, b"\x0a\xff\xff\xff\x0f"),
}


def main():
    d = os.path.join("tests", "fuzz", "corpus", "forward")
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), d))


if __name__ == "__main__":
    main()
