#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/raft_step_fuzz.c into tests/fuzz/corpus/raft_step.

Each seed is a configuration byte and a sequence of the harness's operations
(raft_fuzz_harness.c: opcode byte and operands; raft_step_fuzz.c: deliver's operands), written
to reach deep: an election won and entries committed, a follower taking appends with a
configuration entry, a ReadIndex round, a snapshot installed, a restart, a truncation, and
malformed messages. Files named regress-* are inputs that once crashed the core; this script
leaves them alone. Run from the repository root: python3 tests/fuzz/make_raft_step_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "raft_step")

# opcodes
DELIVER, TICK, PERSIST, PROPOSE, CONF, RESTART, COMPACT, READ, CAMPAIGN, TRANSFER, REPORT = range(11)
# message types (raft.h)
VOTE, VOTE_RESP, PREVOTE, PREVOTE_RESP, APPEND, APPEND_RESP, TIMEOUT_NOW, SNAPSHOT = range(1, 9)
READ_INDEX, READ_INDEX_RESP = 10, 11
# who: bits 0-2 pick the sender (0: id 2, 1: id 3, 3: self, 4: a stranger, 5: 0)
N2, N3, SELF, STRANGER, ZERO = 0, 1, 3, 4, 5
GRANTED, REJECT, TRANSFER_FLAG, EXTRA_ENTRIES, EXTRA_CONF = 2, 4, 1, 8, 16


def cfg(members, pre_vote=False, check_quorum=False, small=False, seed=0):
    return bytes([(members - 1) | (4 if pre_vote else 0) | (8 if check_quorum else 0)
                  | (16 if small else 0) | (seed << 5)])


def rel(delta=0):
    """A field delta away from the harness's base value."""
    assert -128 <= delta < 127
    return bytes([0x80 + delta])


def absolute(v):
    return b"\xff" + struct.pack("<Q", v)


def msg(typ, who=N2, flags=0, term=rel(0), body=b""):
    return bytes([DELIVER, typ, who, flags]) + term + body


def entry_normal(data, term=rel(0), typ=0):
    return term + b"\x80" + bytes([typ, len(data)]) + data


def entry_conf(voters, learners=0, old=0, term=rel(0)):
    return term + b"\x80" + bytes([2, 0x00, voters, learners, old])


def entries(*es):
    return bytes([len(es)]) + b"".join(es)


def append(term=rel(0), prev_index=rel(0), prev_term=rel(0), commit=rel(0), ctx=0, ents=b"\x00",
           who=N2, flags=0):
    return msg(APPEND, who, flags, term, prev_index + prev_term + commit + bytes([ctx]) + ents)


def append_resp(who=N2, flags=0, term=rel(0), match=rel(0), reject_index=rel(0),
                conflict_term=rel(0), conflict_index=rel(0), ctx=0):
    return msg(APPEND_RESP, who, flags, term,
               match + reject_index + conflict_term + conflict_index + bytes([ctx]))


def persist(k=7):
    return bytes([PERSIST, k])


def tick(n):
    return bytes([TICK, n - 1])


def propose(data):
    return bytes([PROPOSE, len(data)]) + data


SEEDS = {}

# A three-member leader: wins an election, commits entries, changes the configuration, serves a
# read, compacts and sends a snapshot, restarts.
SEEDS["leader"] = (
    cfg(3)
    + bytes([CAMPAIGN]) + persist()
    + msg(VOTE_RESP, N2, GRANTED)
    + persist()
    + propose(b"hello")
    + persist()
    + append_resp(N2)
    + append_resp(N3)
    + bytes([CONF, 0b111, 0b1000])
    + persist()
    + append_resp(N2)
    + append_resp(N3)
    + persist()
    + append_resp(N2)
    + bytes([READ, 5])
    + append_resp(N2, ctx=1)
    + bytes([COMPACT]) + rel(0) + rel(0)
    + append_resp(N3, REJECT, reject_index=rel(-1), conflict_term=rel(-1),
                  conflict_index=absolute(1))
    + bytes([REPORT, 0x80 | 3])
    + tick(12)
    + bytes([TRANSFER, 2])
    + append_resp(N2)
    + bytes([RESTART, 0])
)

# A pre-vote election with check-quorum, then losing leadership to a higher term.
SEEDS["prevote"] = (
    cfg(3, pre_vote=True, check_quorum=True)
    + tick(32)
    + msg(PREVOTE_RESP, N2, GRANTED, rel(1))
    + persist()
    + msg(VOTE_RESP, N3, GRANTED)
    + persist()
    + append_resp(N2)
    + tick(12)
    + tick(12)
    + msg(VOTE, N3, 0, rel(2), rel(0) + rel(0))
    + persist()
)

# A follower: appends with a command, a configuration entry and a no-op, commit, a heartbeat,
# a forwarded read, a snapshot ahead of its log, a restart, a vote, a TimeoutNow.
SEEDS["follower"] = (
    cfg(3, pre_vote=True, check_quorum=True)
    + append(term=rel(3), commit=rel(2), ctx=1,
             ents=entries(entry_normal(b"abc"), entry_conf(0b111, 0b1000), entry_normal(b"", typ=1)))
    + persist()
    + append(ctx=2)
    + persist()
    + bytes([READ, 9])
    + msg(READ_INDEX_RESP, N2, 0, rel(0), bytes([9]) + rel(0))
    + msg(SNAPSHOT, N2, 0, rel(0), rel(10) + rel(0) + rel(0) + bytes([1, 0b111, 0, 0]))
    + persist(0)
    + append(commit=rel(0), ents=entries(entry_normal(b"after")))
    + persist()
    + bytes([RESTART, 0])
    + msg(VOTE, N3, 0, rel(1), rel(0) + rel(0))
    + persist()
    + msg(TIMEOUT_NOW, N3)
    + persist()
)

# A follower whose uncommitted suffix is replaced by a new leader's entries (truncation), then a
# restart that loses the last unpersisted write.
SEEDS["truncate"] = (
    cfg(3)
    + append(term=rel(1), ents=entries(entry_normal(b"x"), entry_normal(b"y"), entry_normal(b"z")))
    + persist()
    + append(term=rel(1), who=N3, prev_index=rel(-2), prev_term=rel(0), commit=rel(-2),
             ents=entries(entry_normal(b"q"), entry_conf(0b11)))
    + append(prev_index=rel(0), prev_term=rel(0), who=N3, ents=entries(entry_normal(b"r")))
    + bytes([RESTART, 1])
)

# Malformed messages: invalid types, unknown senders, entries and configurations where none
# belong, zero and maximal terms, broken configuration bytes, out-of-range indices.
SEEDS["malformed"] = (
    cfg(2, small=True)
    + msg(0, N2) + msg(9, N2) + msg(0xf3, N2)
    + msg(APPEND_RESP, STRANGER) + msg(VOTE, ZERO) + msg(VOTE, SELF)
    + msg(VOTE_RESP, N2, EXTRA_ENTRIES | GRANTED, rel(0), entries(entry_normal(b"no")))
    + msg(READ_INDEX, N2, EXTRA_CONF, rel(0), bytes([3, 0x90, 4]) + b"\x01\x02\x03\x04")
    + msg(APPEND, N2, 0, absolute(0), rel(0) + rel(0) + rel(0) + b"\x00\x00")
    + append(term=rel(1), prev_index=absolute(2**64 - 1), ents=entries(entry_normal(b"o")))
    + append(term=rel(0), ents=bytes([1]) + rel(0) + b"\x80" + bytes([2, 0x90, 5]) + b"\x01\x00\x00\x00\x00")
    + append(term=rel(0), ents=bytes([0xc7]) + entry_normal(b"a") * 7)
    + msg(SNAPSHOT, N2, 0, rel(0), absolute(2**64 - 1) + rel(0) + rel(0) + b"\x00")
    + msg(APPEND, N2, 0, absolute(2**64 - 1), rel(0) + rel(0) + rel(0) + b"\x00\x00")
    + tick(32) + tick(32)
    + msg(TIMEOUT_NOW, N2)
)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
