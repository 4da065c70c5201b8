#!/usr/bin/env python3
"""Writes the seed corpus for the KV history record fuzzer (tests/fuzz/corpus/kv_hist/).

A second encoder of the layout in services/kvstore/kv_hist.h (and docs/kv.md "History"), written
from the spec, so kv_hist_corpus_check also checks the C decoder against another reading of it.
Each seed is: one byte (the LMDB key's length), the key, the value. Run from the repository root:
    python3 tests/fuzz/make_kv_hist_corpus.py
"""
import os
import struct


def hist_key(rev, sub):
    return struct.pack(">QQ", rev, sub)


def hist_value(key, typ, rec=b"", pad=b"\0\0\0"):
    return struct.pack("<IB", len(key), typ) + pad + key + rec


def record(create, mod, version, value=b"", lease=0):
    return struct.pack("<qqqq", create, mod, version, lease) + value


def seed(key, value):
    return bytes([len(key)]) + key + value


def main():
    out = "tests/fuzz/corpus/kv_hist"
    os.makedirs(out, exist_ok=True)
    seeds = {
        # valid
        "put": seed(hist_key(7, 0), hist_value(b"foo", 0, record(3, 7, 2, b"bar"))),
        "put_empty_value": seed(hist_key(1, 0), hist_value(b"k", 0, record(1, 1, 1))),
        "delete": seed(hist_key(9, 2), hist_value(b"foo", 1)),
        "binary_key_long": seed(hist_key(2**40, 5), hist_value(b"\0\xff" * 255 + b"x", 0,
                                                              record(1, 2**40, 9, b"v" * 300))),
        # invalid, each for one rule
        "revision_zero": seed(hist_key(0, 0), hist_value(b"k", 1)),
        "key_short": seed(hist_key(7, 0)[:15], hist_value(b"k", 1)),
        "type_unknown": seed(hist_key(7, 0), hist_value(b"k", 2)),
        "padding_set": seed(hist_key(7, 0), hist_value(b"k", 1, pad=b"\0\1\0")),
        "key_length_zero": seed(hist_key(7, 0), hist_value(b"", 1)),
        "key_past_value": seed(hist_key(7, 0), struct.pack("<IB", 50, 1) + b"\0\0\0" + b"k"),
        "put_record_short": seed(hist_key(7, 0), hist_value(b"k", 0, b"\0" * 31)),
        "delete_with_record": seed(hist_key(7, 0), hist_value(b"k", 1, record(1, 7, 1))),
        "key_too_long": seed(hist_key(7, 0), hist_value(b"k" * 512, 1)),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
