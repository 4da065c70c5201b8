#!/usr/bin/env python3
"""Writes the seed corpus for the member table fuzzer (tests/fuzz/corpus/cluster/).

A second encoder of the format in services/cluster.c ("Encoding, version 2"), and of the
member and cluster ids of cluster_member_id() and cluster_parse(), written from the header, so
cluster_corpus_check also checks the C code against another reading of it. Valid tables and
tables that each break one rule. Run from the repository root:
    python3 tests/fuzz/make_cluster_corpus.py
"""
import hashlib
import os
import struct


def member_id(name, token):
    d = hashlib.sha256(b"craft-member\0" + name.encode() + b"\0" + token.encode()).digest()
    return int.from_bytes(d[:8], "big") or 1


def member_id_url(canonical_url, token):
    """cluster_member_id_url(): an unnamed member's id, from its canonical peer URL."""
    d = hashlib.sha256(b"craft-member-url\0" + canonical_url.encode() + b"\0" + token.encode()).digest()
    return int.from_bytes(d[:8], "big") or 1


def cluster_id(ids, token):
    b = b"".join(i.to_bytes(8, "big") for i in sorted(ids))
    d = hashlib.sha256(b"craft-cluster\0" + b + token.encode()).digest()
    return int.from_bytes(d[:8], "big") or 1


def raw(s):
    return s.encode() if isinstance(s, str) else s


def member(mid, name, url, name_len=None, url_len=None, flags=0, version=2):
    name, url = raw(name), raw(url)
    return (struct.pack("<QB", mid, len(name) if name_len is None else name_len) + name +
            struct.pack("<H", len(url) if url_len is None else url_len) + url +
            (struct.pack("<B", flags) if version >= 2 else b""))


def table(cid, members, version=2, count=None):
    return (struct.pack("<BQB", version, cid, len(members) if count is None else count) +
            b"".join(members))


def initial(spec, token):
    """The table cluster_parse(spec, token) builds, encoded."""
    pairs = [item.split("=", 1) for item in spec.split(",")]
    ids = [member_id(n, token) for n, _ in pairs]
    return table(cluster_id(ids, token), [member(i, n, u) for i, (n, u) in zip(ids, pairs)])


def main():
    out = "tests/fuzz/corpus/cluster"
    os.makedirs(out, exist_ok=True)
    three = initial("n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2480,"
                    "n3=https://127.0.0.1:2580", "tok")
    a = member(0x0102030405060708, "alpha", "https://10.0.0.1:2380")
    b = member(0x1112131415161718, "beta", "https://[fd00::2]:2380")
    cid = 0xA1A2A3A4A5A6A7A8
    full = []
    for i in range(64):
        name = "%063d" % i
        host = ["a" * 255, "fd00::%x" % i, "10.0.0.%d" % i][i % 3]
        host = "[%s]" % host if ":" in host else host
        full.append(member(member_id(name, "tok"), name,
                           "%s://%s:%d" % ("https" if i % 2 else "http", host, 65535 - i)))
    seeds = {
        "one_member": initial("solo=https://127.0.0.1:2380", "tok"),
        # three_members after etcd's MemberAdd of https://127.0.0.1:2680: a member without a name
        # (name length 0) whose id derives from its peer URL.
        "unnamed_member": three[:9] + bytes([4]) + three[10:] +
                          member(member_id_url("https://127.0.0.1:2680", "tok"), "",
                                 "https://127.0.0.1:2680"),
        "three_members": three,
        "ipv6_and_http": table(cid, [a, b, member(3, "c-3.x_y", "http://node.example.com:80")]),
        "full_table": table(42, full),
        "version_1": table(cid, [member(0x0102030405060708, "alpha", "https://10.0.0.1:2380",
                                        version=1)], version=1),
        "to_promote": table(cid, [a, member(0x1112131415161718, "beta", "https://[fd00::2]:2380",
                                            flags=1)]),
        "version_3": table(cid, [a], version=3),
        "unknown_flags": table(cid, [member(1, "a", "https://h:1", flags=0x80)]),
        "flags_missing": table(cid, [member(1, "a", "https://h:1", version=1)]),
        "cluster_id_zero": table(0, [a]),
        "count_zero": table(cid, []),
        "count_65": table(cid, [a], count=65),
        "member_id_zero": table(cid, [a, member(0, "beta", "https://h:1")]),
        "duplicate_id": table(cid, [a, member(0x0102030405060708, "beta", "https://h:1")]),
        "duplicate_name": table(cid, [a, member(2, "alpha", "https://h:1")]),
        "duplicate_address": table(cid, [a, member(2, "beta", "http://10.0.0.1:2380")]),
        "name_too_long": table(cid, [member(1, "n" * 64, "https://h:1")]),
        "name_bad_char": table(cid, [member(1, "a/b", "https://h:1")]),
        "url_too_long": table(cid, [member(1, "a", "https://h:1", url_len=1000)]),
        "url_with_nul": table(cid, [member(1, "a", b"https://h:1\0")]),
        "url_not_canonical": table(cid, [member(1, "a", "https://h:1/")]),
        "url_bad_port": table(cid, [member(1, "a", "https://h:65536")]),
        "byte_after_end": three + b"\0",
        "truncated_in_member": three[:40],
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
