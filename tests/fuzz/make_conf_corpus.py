#!/usr/bin/env python3
"""Writes the seed corpus for conf_decode_fuzz.c: configurations encoded as raft.h describes
(version 1, counts of voters / old voters / learners, ctx length u32 LE, the ids u64 LE, ctx),
by a second encoder written from the spec. Usage: make_conf_corpus.py OUTDIR"""
import os, struct, sys

def enc(voters, old=(), learners=(), ctx=b""):
    b = bytes([1, len(voters), len(old), len(learners)]) + struct.pack("<I", len(ctx))
    for i in list(voters) + list(old) + list(learners):
        b += struct.pack("<Q", i)
    return b + ctx

seeds = {
    "one_voter": enc([1]),
    "three_voters": enc([1, 2, 3]),
    "joint": enc([1, 2, 4], old=[1, 2, 3]),
    "learners": enc([1, 2, 3], learners=[7, 9]),
    "joint_learner_ctx": enc([2, 3, 4], old=[1, 2, 3], learners=[5], ctx=b"members\x00\x01"),
    "big_ids": enc([2**64 - 2, 2**64 - 1]),
    "bad_unsorted": enc([3, 1]),
    "bad_learner_voter": enc([1, 2], learners=[2]),
    "bad_len": enc([1, 2])[:-1],
    "bad_version": bytes([2]) + enc([1])[1:],
}
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
