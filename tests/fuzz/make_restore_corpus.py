#!/usr/bin/env python3
"""Seeds for restore_check_fuzz: files as `etcdctl snapshot save` writes them from craft (a KV
snapshot payload from corpus/kv_snap, zero padding to 512 bytes, its SHA-256) and damaged ones.
Run from the repository root: python3 tests/fuzz/make_restore_corpus.py"""
import hashlib, os

src = "tests/fuzz/corpus/kv_snap"
out = "tests/fuzz/corpus/restore"
os.makedirs(out, exist_ok=True)

def saved(payload, pad=None):
    if pad is None:
        pad = (512 - len(payload) % 512) % 512
    body = payload + b"\0" * pad
    return body + hashlib.sha256(body).digest()

for name in ("three_keys", "empty_store", "binary_keys_and_value"):
    p = open(os.path.join(src, name), "rb").read()
    good = saved(p)
    open(os.path.join(out, name + ".db"), "wb").write(good)
    if name == "three_keys":
        open(os.path.join(out, "truncated.db"), "wb").write(good[:-100])
        bad = bytearray(good); bad[60] ^= 1
        open(os.path.join(out, "flipped_byte.db"), "wb").write(bytes(bad))
        open(os.path.join(out, "no_padding.db"), "wb").write(saved(p, 0))
        open(os.path.join(out, "too_much_padding.db"), "wb").write(saved(p, 600))
        body = p + b"\0\0\1" + b"\0" * ((512 - (len(p) + 3) % 512) % 512)
        open(os.path.join(out, "junk_in_padding.db"), "wb").write(body + hashlib.sha256(body).digest())
