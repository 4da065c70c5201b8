#!/usr/bin/env python3
"""Writes the seed corpus for the Lease fuzzer (tests/fuzz/corpus/lease/).

Each seed is one byte naming the path (0 keep-alive request, 1 TimeToLive request, 2 the
leader's keep-alive answer, 3 the leader's TimeToLive answer, 4 a Grant through the rules)
and then the message, encoded here by hand from etcd's rpc.proto with the protobuf wire
format - a second encoder, so lease_corpus_check also checks the C decoders. Answers carry
cluster id 0x1234 and lease 7 when they are meant to be accepted. Run from the repository
root:
    python3 tests/fuzz/make_lease_corpus.py
"""
import os


def varint(n):
    n &= (1 << 64) - 1  # negative int64s are ten bytes, two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    tag = varint(num << 3 | wire)
    if wire == 0:
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload


def header(cluster=0x1234, member=1, rev=5, term=2):
    return field(1, 2, field(1, 0, cluster) + field(2, 0, member) + field(3, 0, rev) +
                 field(4, 0, term))


def ka_resp(lid=7, ttl=10, cluster=0x1234):
    return header(cluster) + field(2, 0, lid) + field(3, 0, ttl)


def ttl_resp(lid=7, ttl=9, granted=10, keys=(), cluster=0x1234):
    b = header(cluster) + field(2, 0, lid) + field(3, 0, ttl) + field(4, 0, granted)
    for k in keys:
        b += field(5, 2, k)
    return b


SEEDS = {
    "ka_request": b"\x00" + field(1, 0, 7),
    "ka_request_empty": b"\x00",
    "ka_request_negative": b"\x00" + field(1, 0, -3),
    "ka_request_truncated": b"\x00" + field(1, 0, 1 << 40)[:-1],
    "ttl_request_keys": b"\x01" + field(1, 0, 7) + field(2, 0, 1),
    "ttl_request_bad_wire": b"\x01" + bytes([0x0F]),
    "ka_answer": b"\x02" + ka_resp(),
    "ka_answer_not_found": b"\x02" + ka_resp(ttl=0),
    "ka_answer_other_cluster": b"\x02" + ka_resp(cluster=0x9999),
    "ka_answer_other_lease": b"\x02" + ka_resp(lid=8),
    "ka_answer_negative_ttl": b"\x02" + ka_resp(ttl=-1),
    "ka_answer_huge_ttl": b"\x02" + ka_resp(ttl=9000000001),
    "ka_answer_no_header": b"\x02" + field(2, 0, 7) + field(3, 0, 10),
    "ttl_answer_keys": b"\x03" + ttl_resp(keys=(b"a", b"b/c")),
    "ttl_answer_not_found": b"\x03" + ttl_resp(ttl=-1, granted=0),
    "ttl_answer_below_minus_one": b"\x03" + ttl_resp(ttl=-2),
    "ttl_answer_other_lease": b"\x03" + ttl_resp(lid=9),
    "grant_zero": b"\x04" + field(1, 0, 0),
    "grant_negative": b"\x04" + field(1, 0, -5) + field(2, 0, 99),
    "grant_huge": b"\x04" + field(1, 0, 9000000001),
    "grant_max": b"\x04" + field(1, 0, 9000000000) + field(2, 0, 1),
}


def main():
    d = os.path.join("tests", "fuzz", "corpus", "lease")
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
