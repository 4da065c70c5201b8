#!/usr/bin/env python3
"""Writes the seed corpus for the snapshot fuzzer (tests/fuzz/corpus/snap/).

An independent encoder of the format in docs/snapshots.md, so the seeds also check the C decoder
against a second reading of the spec (tests/fuzz/snap_corpus_check.c). Run from the repository
root:
    python3 tests/fuzz/make_snap_corpus.py
"""
import os
import struct
import sys

# The CRC32C of the WAL's seed generator, written from the spec too (and checked there against the
# standard test vector).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_wal_corpus import crc32c  # noqa: E402


def header(index, term, cfg_len, payload_len, version=1, reserved=b""):
    h = b"CRFTSNAP" + struct.pack("<IIQQQ", version, cfg_len, index, term, payload_len)
    h += reserved.ljust(20, b"\0")
    return h + struct.pack("<I", crc32c(h))


def snapshot(index, term, cfg, payload):
    body = header(index, term, len(cfg), len(payload)) + cfg + payload
    return body + struct.pack("<I", crc32c(body)) + b"CRSE"


def flip(data, offset, mask=1):
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


def main():
    out = "tests/fuzz/corpus/snap"
    os.makedirs(out, exist_ok=True)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(40))
    small = snapshot(9, 2, b"n1,n2", payload)
    seeds = {
        "smallest": snapshot(1, 1, b"", b""),
        "small": small,
        "config_only": snapshot(0x1234, 5, bytes(range(100)), b""),
        "larger": snapshot(1 << 40, 77, b"voters=1,2,3;learners=4",
                           bytes((i * 13) & 0xFF for i in range(3000))),
        "truncated_header": small[:30],
        "bad_magic": b"XRFTSNAP" + small[8:],
        "bad_version": header(9, 2, 5, 40, version=2) + small[64:],
        "header_checksum": flip(small, 20),
        "oversize_config": header(9, 2, 65537, 40) + small[64:],
        "reserved_not_zero": header(9, 2, 5, 40, reserved=b"\0\0\0\0\0\1") + small[64:],
        "index_zero": snapshot(0, 2, b"", b"x"),
        "payload_length_short": header(9, 2, 5, 39) + small[64:],
        "payload_length_long": header(9, 2, 5, 41) + small[64:],
        "checksum": flip(small, 80),
        "trailer_marker": small[:-1] + b"X",
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
