#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/peer_batch_fuzz.c into tests/fuzz/corpus/peer_batch.

Each seed is the harness's input (raft_fuzz_harness.c: a configuration byte, then operations)
where the deliver operation carries protobuf bytes: a craft.raft.Batch (services/proto/
raftpb.proto), or a craft.raft.SnapshotChunk. The protobuf encoding is written here by hand -
a second encoder, so the seeds do not depend on the code under test. The seeds reach deep: an
election won with a vote from the wire, entries acknowledged and committed, a follower taking
appends with a configuration entry, a snapshot chunk installing a snapshot; and malformed
Batches (truncated, bad wire types, an unknown message type). Files named regress-* are inputs
that once crashed; this script leaves them alone. Run from the repository root:
python3 tests/fuzz/make_peer_batch_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "peer_batch")

DELIVER, TICK, PERSIST, PROPOSE, CONF, RESTART, COMPACT, READ, CAMPAIGN = range(9)
VOTE, VOTE_RESP, PREVOTE, PREVOTE_RESP, APPEND, APPEND_RESP, TIMEOUT_NOW, SNAPSHOT = range(1, 9)
READ_INDEX, READ_INDEX_RESP = 10, 11

# Field numbers of craft.raft.Message (raftpb.proto), in order.
MSG_FIELDS = ["type", "from", "to", "term", "last_log_index", "last_log_term", "transfer",
              "granted", "prev_index", "prev_term", "commit", "entries", "reject", "match_index",
              "reject_index", "conflict_term", "conflict_index", "ctx", "read_index",
              "snapshot_index", "snapshot_term", "conf"]


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v) if v else b""


def field_bytes(num, data):
    return varint((num << 3) | 2) + varint(len(data)) + data


def entry(index, term, typ=0, data=b""):
    return (field_varint(1, index) + field_varint(2, term) + field_varint(3, typ)
            + (field_bytes(4, data) if data else b""))


def message(**kw):
    out = b""
    for num, name in enumerate(MSG_FIELDS, 1):
        if name not in kw:
            continue
        v = kw[name]
        if name == "entries":
            out += b"".join(field_bytes(num, e) for e in v)
        elif name == "conf":
            out += field_bytes(num, v)
        else:
            out += field_varint(num, int(v))
    return out


def batch(*msgs, cluster_id=0, client_urls=b"", probe=0):
    return (field_varint(1, cluster_id) + b"".join(field_bytes(2, m) for m in msgs)
            + (field_bytes(3, client_urls) if client_urls else b"") + field_varint(4, probe))


def snapshot_chunk(msg, total=0, offset=0, data=b""):
    return field_varint(1, 0) + field_bytes(2, msg) + field_varint(3, total) + field_varint(4, offset) + (
        field_bytes(5, data) if data else b"")


def conf_blob(voters, learners=(), old=()):
    """raft_conf_encode's layout (raft/core/raft_conf.c): version 1, three counts, the ids."""
    head = struct.pack("<BBBBI", 1, len(voters), len(old), len(learners), 0)
    return head + b"".join(struct.pack("<Q", i) for i in list(voters) + list(old) + list(learners))


def deliver(payload, kind=0):
    return bytes([DELIVER, kind]) + struct.pack("<H", len(payload)) + payload


def persist(k=7):
    return bytes([PERSIST, k])


def cfg(members, pre_vote=False, check_quorum=False):
    return bytes([(members - 1) | (4 if pre_vote else 0) | (8 if check_quorum else 0)])


SEEDS = {}

SEEDS["leader"] = (
    cfg(3)
    + bytes([CAMPAIGN]) + persist()
    + deliver(batch(message(type=VOTE_RESP, **{"from": 2}, to=1, term=1, granted=True),
                    client_urls=b"https://127.0.0.1:2379", probe=77))
    + persist()
    + bytes([PROPOSE, 3]) + b"put"
    + persist()
    + deliver(batch(message(type=APPEND_RESP, **{"from": 2}, to=1, term=1, match_index=2),
                    message(type=APPEND_RESP, **{"from": 3}, to=1, term=1, match_index=2, ctx=0),
                    message(type=READ_INDEX, **{"from": 3}, to=1, term=1, ctx=42)))
    + deliver(batch(message(type=APPEND_RESP, **{"from": 3}, to=1, term=1, reject=True,
                            reject_index=2, conflict_term=0, conflict_index=1)))
    + deliver(batch(message(type=VOTE, **{"from": 3}, to=1, term=2, last_log_index=2,
                            last_log_term=1)))
    + persist()
)

SEEDS["follower"] = (
    cfg(3, pre_vote=True, check_quorum=True)
    + deliver(batch(message(type=APPEND, **{"from": 2}, to=1, term=2, prev_index=0, prev_term=0,
                            commit=2, ctx=1,
                            entries=[entry(1, 2, 1), entry(2, 2, 0, b"cmd"),
                                     entry(3, 2, 2, conf_blob([1, 2, 3], learners=[4]))])))
    + persist()
    + deliver(batch(message(type=APPEND, **{"from": 2}, to=1, term=2, prev_index=3, prev_term=2,
                            commit=3, ctx=2)))
    + persist()
    + bytes([READ, 7])
    + deliver(batch(message(type=READ_INDEX_RESP, **{"from": 2}, to=1, term=2, ctx=7,
                            read_index=3)))
    + deliver(snapshot_chunk(message(type=SNAPSHOT, **{"from": 2}, to=1, term=2, commit=9,
                                     snapshot_index=9, snapshot_term=2,
                                     conf=conf_blob([1, 2, 3])), total=100, data=b"x" * 8), kind=1)
    + persist()
    + deliver(batch(message(type=APPEND, **{"from": 2}, to=1, term=2, prev_index=9, prev_term=2,
                            commit=10, entries=[entry(10, 2, 0, b"after")])))
    + persist()
    + bytes([RESTART, 0])
    + deliver(batch(message(type=TIMEOUT_NOW, **{"from": 2}, to=1, term=2)))
    + persist()
)

SEEDS["malformed"] = (
    cfg(2)
    + deliver(batch(message(type=APPEND, **{"from": 2}, to=1, term=1))[:-1])  # cut short
    + deliver(b"\x12\x05\x08\x01\x10")  # a message whose length overruns
    + deliver(b"\x0f\x00")  # wire type 7 does not exist
    + deliver(batch(message(type=9, **{"from": 2}, to=1, term=1),  # type 9 is reserved
                    message(type=12, **{"from": 2}, to=1, term=1),  # past the last type
                    message(type=2**32 - 1, **{"from": 2}, to=1, term=1),
                    message(type=APPEND, **{"from": 2}, to=1, term=1,
                            entries=[entry(1, 1, 3)]),  # entry type 3 does not exist
                    message(type=APPEND, **{"from": 2}, to=1, term=1,
                            entries=[entry(1, 1, 2, b"\x01\x02")]),  # broken configuration
                    message(type=VOTE_RESP, **{"from": 2}, to=1, term=1, granted=True,
                            entries=[entry(1, 1)]),  # entries where none belong
                    message(type=READ_INDEX, **{"from": 2}, to=1, term=1, conf=b"\x01"),
                    message(type=APPEND, **{"from": 2}, to=1, term=2**64 - 1,
                            prev_index=2**64 - 1, prev_term=1, commit=2**64 - 1)))
    + deliver(snapshot_chunk(message(type=APPEND, **{"from": 2}, to=1, term=1)), kind=1)
    + deliver(snapshot_chunk(message(type=SNAPSHOT, **{"from": 2}, to=1, term=1,
                                     snapshot_index=5, snapshot_term=1, commit=5,
                                     conf=b"\x01\x00")), kind=1)
    + bytes([TICK, 31, TICK, 31])
)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
