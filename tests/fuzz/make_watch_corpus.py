#!/usr/bin/env python3
"""Writes the seed corpus for the Watch request fuzzer (tests/fuzz/corpus/watch/).

A second encoder of etcd's WatchRequest (services/proto/etcd/rpc.proto), written from the
.proto with the protobuf wire format by hand, so watch_corpus_check also checks the C decoder
(protoc-c's code plus services/watch_req.c's normalization) against another reading of it.
Valid creates of each range kind, cancels, progress requests, and inputs that each break one
rule. Run from the repository root:
    python3 tests/fuzz/make_watch_corpus.py
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


def create(key=None, end=None, start=0, progress=False, filters=(), prev_kv=False, watch_id=0,
           fragment=False, packed=True):
    b = b""
    if key is not None:
        b += field(1, 2, key)
    if end is not None:
        b += field(2, 2, end)
    if start:
        b += field(3, 0, start)
    if progress:
        b += field(4, 0, 1)
    if filters:
        if packed:
            b += field(5, 2, b"".join(varint(f) for f in filters))
        else:
            b += b"".join(field(5, 0, f) for f in filters)
    if prev_kv:
        b += field(6, 0, 1)
    if watch_id:
        b += field(7, 0, watch_id)
    if fragment:
        b += field(8, 0, 1)
    return field(1, 2, b)


def cancel(watch_id):
    return field(2, 2, field(1, 0, watch_id) if watch_id else b"")


def progress():
    return field(3, 2, b"")


SEEDS = {
    "create_key": create(b"foo"),
    "create_prefix_all_options": create(b"p/", b"p0", start=5, progress=True, filters=(0, 1),
                                        prev_kv=True, watch_id=7, fragment=True),
    "create_from_key": create(b"a", b"\0"),
    "create_every_key": create(b"\0", b"\0"),
    "create_empty_key": create(),
    "create_inverted_range": create(b"b", b"a"),
    "create_equal_range": create(b"b", b"b"),
    "create_negative_start": create(b"k", start=-1),
    "create_negative_id": create(b"k", watch_id=-5),
    "create_huge_start": create(b"k", start=(1 << 63) - 1),
    "create_unknown_filter_unpacked": create(b"k", filters=(7, 1), packed=False),
    "create_key_too_long": create(b"k" * 4097),
    "create_range_end_max": create(b"k", b"l" * 4096),
    "cancel": cancel(3),
    "cancel_zero": cancel(0),
    "progress": progress(),
    "empty": b"",
    "unknown_field": field(15, 0, 1),
    "truncated": create(b"foo")[:-1],
    "create_then_cancel": create(b"x") + cancel(9),  # a oneof: the last member read wins
    "bad_wire_type": bytes([0x0F]),
}


def main():
    d = os.path.join("tests", "fuzz", "corpus", "watch")
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
