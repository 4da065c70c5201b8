#!/usr/bin/env python3
"""Writes the seed corpus for the client request fuzzer (tests/fuzz/corpus/kv_req/).

Each seed is one selector byte (path = byte % 9, parameter = byte // 9; see kv_req_fuzz.c)
and then the message, encoded here by hand from etcd's rpc.proto and craft's raftpb.proto with
the protobuf wire format. Paths: 0 Range, 1 Put, 2 DeleteRange, 3 Compact, 4 Txn (odd
parameter: the default op budget, else 2 + parameter), 5 a Cluster change (parameter % 5:
Add, Remove, Update, Promote, MoveLeader; parameter // 5 % 2: https), 6 Peer.Member, 7 the
leader's MemberReply (parameter % 4 the method - 1), 8 Maintenance/MemberList requests
(parameter % 4: Status, Snapshot, MemberList) or a LeaseGrant's command (parameter % 4 = 3);
with parameter 12 and above, the Auth requests (below).
Member ids below 8 name the fuzzer's table members by index. Run from the repository root:
    python3 tests/fuzz/make_kv_req_corpus.py
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
    """A field: int -> varint, bytes/str -> length-delimited."""
    if isinstance(v, int):
        return varint(num << 3) + varint(v)
    if isinstance(v, str):
        v = v.encode()
    return varint(num << 3 | 2) + varint(len(v)) + v


def sel(kind, param=0):
    return bytes([kind + 9 * param])


def rng(key, end=b"", **kw):
    b = f(1, key) + (f(2, end) if end else b"")
    for num, name in ((3, "limit"), (4, "revision"), (5, "sort_order"), (6, "sort_target"),
                      (7, "serializable"), (8, "keys_only"), (9, "count_only")):
        if name in kw:
            b += f(num, kw[name])
    return b


def put(key, val=b"v", lease=0, prev=0, ignore_value=0, ignore_lease=0):
    b = f(1, key) + (f(2, val) if val else b"")
    if lease:
        b += f(3, lease)
    if prev:
        b += f(4, 1)
    if ignore_value:
        b += f(5, 1)
    if ignore_lease:
        b += f(6, 1)
    return b


def dele(key, end=b"", prev=0):
    return f(1, key) + (f(2, end) if end else b"") + (f(3, 1) if prev else b"")


def cmp(key, result=0, target=0, value=None, version=None):
    b = f(1, result) + f(2, target) + f(3, key)
    if version is not None:
        b += f(4, version)
    if value is not None:
        b += f(7, value)
    return b


def op_range(r):
    return f(1, r)


def op_put(p):
    return f(2, p)


def op_del(d):
    return f(3, d)


def op_txn(t):
    return f(4, t)


def txn(compares=(), success=(), failure=()):
    return (b"".join(f(1, c) for c in compares) + b"".join(f(2, o) for o in success) +
            b"".join(f(3, o) for o in failure))


def nested(depth):
    t = txn(success=[op_put(put(b"deep"))])
    for _ in range(depth):
        t = txn(success=[op_txn(t)])
    return t


def member_reply(code, resp=b"", msg=""):
    return f(1, code) + (f(2, msg) if msg else b"") + (f(3, resp) if resp else b"")


HEADER = f(1, f(1, 0x1234) + f(2, 1) + f(3, 5) + f(4, 2))
MEMBER = f(1, 77) + f(2, "d") + f(3, "https://d.test:2380") + f(4, "https://d.test:2379")

SEEDS = {
    "range": sel(0) + rng(b"a"),
    "range_prefix_sorted": sel(0) + rng(b"a", b"b", limit=10, sort_order=2, sort_target=3),
    "range_bad_enum": sel(0) + rng(b"a", sort_target=9),
    "range_empty_key": sel(0) + f(3, 5),
    "range_from_key_count": sel(0) + rng(b"\0", b"\0", count_only=1, revision=3),
    "put": sel(1) + put(b"k"),
    "put_lease_prev": sel(1) + put(b"k", b"value", lease=7, prev=1),
    "put_ignore_both": sel(1) + put(b"k", b"", ignore_value=1, ignore_lease=1),
    "put_ignore_value_with_value": sel(1) + put(b"k", b"x", ignore_value=1),
    "put_key_too_long": sel(1) + put(b"k" * 512),
    "put_lease_key_503": sel(1) + put(b"k" * 504, lease=3),
    "put_unknown_field": sel(1) + put(b"k") + f(15, 3),
    "delete": sel(2) + dele(b"a"),
    "delete_range_prev": sel(2) + dele(b"a", b"z", prev=1),
    "delete_from_key": sel(2) + dele(b"\0", b"\0"),
    "compact": sel(3) + f(1, 5),
    "compact_physical": sel(3) + f(1, 9) + f(2, 1),
    "compact_negative": sel(3) + f(1, -1),
    "compact_overlong_field0": sel(3, 1) + b"\x80\x00\x08",
    "txn_put": sel(4, 1) + txn([cmp(b"k", 0, 0, version=0)], [op_put(put(b"k"))],
                               [op_range(rng(b"k"))]),
    "txn_read_only": sel(4, 1) + txn([cmp(b"k", 1, 3, value=b"v")], [op_range(rng(b"k"))],
                                     [op_range(rng(b"a", b"z"))]),
    "txn_nested": sel(4, 1) + txn(success=[op_txn(txn([cmp(b"x", 2, 2)],
                                                      [op_put(put(b"x"))],
                                                      [op_del(dele(b"y"))]))]),
    "txn_duplicate": sel(4, 1) + txn(success=[op_put(put(b"k")), op_put(put(b"k"))]),
    "txn_put_in_deleted_range": sel(4, 1) + txn(success=[op_del(dele(b"a", b"z")),
                                                         op_txn(txn(success=[op_put(put(b"m"))]))]),
    "txn_both_branches": sel(4, 1) + txn(success=[op_txn(txn(success=[op_put(put(b"k"))],
                                                             failure=[op_put(put(b"k"))]))]),
    "txn_too_many_ops": sel(4, 0) + txn(success=[op_put(put(b"%d" % i)) for i in range(4)]),
    "txn_bad_compare_enum": sel(4, 1) + txn([cmp(b"k", 7, 0)]),
    "txn_empty_op": sel(4, 1) + txn(success=[b""]),
    "txn_deep_256": sel(4, 1) + nested(255),
    "txn_deep_257": sel(4, 1) + nested(257),
    "txn_truncated": sel(4, 1) + txn(success=[op_put(put(b"k"))])[:-2],
    "txn_field0_nested": sel(4, 1) + txn(success=[op_put(put(b"k") + b"\x80\x00\x01")]),
    "member_add": sel(5, 5) + f(1, "https://d.test:2380"),
    "member_add_learner": sel(5, 5) + f(1, "https://e.test:2380") + f(2, 1),
    "member_add_url_taken": sel(5, 5) + f(1, "https://a.test:2380"),
    "member_add_two_urls": sel(5, 5) + f(1, "https://d.test:1") + f(1, "https://d.test:2"),
    "member_add_http_in_tls": sel(5, 5) + f(1, "http://d.test:2380"),
    "member_add_ipv6": sel(5, 5) + f(1, "https://[::1]:2380"),
    "member_add_bad_port": sel(5, 5) + f(1, "https://d.test:99999"),
    "member_remove": sel(5, 1) + f(1, 1),
    "member_remove_unknown": sel(5, 1) + f(1, 999),
    "member_update": sel(5, 7) + f(1, 2) + f(2, "https://z.test:2380"),
    "member_update_to_taken": sel(5, 7) + f(1, 2) + f(2, "https://a.test:2380"),
    "member_promote_learner": sel(5, 3) + f(1, 2),
    "member_promote_voter": sel(5, 3) + f(1, 0),
    "move_leader": sel(5, 4) + f(1, 1),
    "peer_member_add": sel(6, 1) + f(1, 0x1234) + f(2, 1) + f(3, f(1, "https://d.test:2380")),
    "peer_member_remove": sel(6, 1) + f(1, 0x1234) + f(2, 2) + f(3, f(1, 0)),
    "peer_member_other_cluster": sel(6) + f(1, 0x9999) + f(2, 2) + f(3, f(1, 0)),
    "peer_member_bad_method": sel(6) + f(1, 0x1234) + f(2, 5),
    "reply_add": sel(7, 0) + member_reply(0, HEADER + f(2, MEMBER) + f(3, MEMBER)),
    "reply_remove": sel(7, 1) + member_reply(0, HEADER + f(1, MEMBER)),
    "reply_error": sel(7, 2) + member_reply(9, msg="etcdserver: unhealthy cluster"),
    "reply_bad_response": sel(7, 3) + member_reply(0, b"\x0a\x05\x01"),
    "status": sel(8, 0),
    "snapshot": sel(8, 1),
    "member_list": sel(8, 2) + f(1, 1),
    "lease_grant": sel(8, 3) + f(1, 10) + f(2, 7),
    "lease_grant_overlong_field0": sel(8, 3) + f(1, 10) + f(2, 7) + b"\x80\x00\x05",
    "lease_grant_no_id": sel(8, 3) + f(1, 10),
    # Auth (selector 8, parameter 12 + the request: AuthEnable, AuthDisable, UserAdd,
    # UserDelete, UserChangePassword, UserGrantRole, UserRevokeRole, RoleAdd, RoleDelete,
    # RoleGrantPermission, RoleRevokePermission, then the reads UserGet, UserList, RoleGet,
    # RoleList, Authenticate), applied to kv_req_fuzz.c's small state (root; user u with role r on [a, c)).
    "auth_enable": sel(8, 12),
    "auth_disable": sel(8, 13) + b"",
    "auth_user_add": sel(8, 14) + f(1, "alice") + f(2, "pw"),
    "auth_user_add_no_password": sel(8, 14) + f(1, "bob") + f(3, f(1, 1)),
    "auth_user_add_empty": sel(8, 14) + f(2, "pw"),
    "auth_user_add_exists": sel(8, 14) + f(1, "u"),
    "auth_user_delete_root": sel(8, 15) + f(1, "root"),
    "auth_user_delete": sel(8, 15) + f(1, "u"),
    "auth_user_passwd": sel(8, 16) + f(1, "u") + f(2, "new"),
    "auth_user_grant": sel(8, 17) + f(1, "u") + f(2, "root"),
    "auth_user_grant_missing_role": sel(8, 17) + f(1, "u") + f(2, "nope"),
    "auth_user_revoke": sel(8, 18) + f(1, "u") + f(2, "r"),
    "auth_user_revoke_root_root": sel(8, 18) + f(1, "root") + f(2, "root"),
    "auth_role_add": sel(8, 19) + f(1, "s"),
    "auth_role_delete": sel(8, 20) + f(1, "r"),
    "auth_role_grant_prefix": sel(8, 21) + f(1, "r") + f(2, f(1, 2) + f(2, "p/") + f(3, "p0")),
    "auth_role_grant_from_key": sel(8, 21) + f(1, "r") + f(2, f(1, 0) + f(2, "x") + f(3, b"\x00")),
    "auth_role_grant_inverted": sel(8, 21) + f(1, "r") + f(2, f(1, 0) + f(2, "b") + f(3, "a")),
    "auth_role_grant_bad_type": sel(8, 21) + f(1, "r") + f(2, f(1, 7) + f(2, "k")),
    "auth_role_grant_no_perm": sel(8, 21) + f(1, "r"),
    "auth_role_grant_update": sel(8, 21) + f(1, "r") + f(2, f(1, 0) + f(2, "a") + f(3, "c")),
    "auth_role_revoke": sel(8, 22) + f(1, "r") + f(2, "a") + f(3, "c"),
    "auth_role_revoke_missing": sel(8, 22) + f(1, "r") + f(2, "zz"),
    "auth_user_get": sel(8, 23) + f(1, "u"),
    "auth_user_list": sel(8, 24),
    "auth_role_get": sel(8, 25) + f(1, "r"),
    "auth_role_list": sel(8, 26),
    "auth_authenticate": sel(8, 27) + f(1, "u") + f(2, "pw"),
}


def main():
    d = os.path.join("tests", "fuzz", "corpus", "kv_req")
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), d))


if __name__ == "__main__":
    main()
