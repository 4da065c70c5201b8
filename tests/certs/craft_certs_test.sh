#!/usr/bin/env bash
# Checks certs/craft-certs: the chain verifies, key usages and SANs are what peers and clients
# need, expired certificates can be made for tests, and bad input is refused with exit code 2.
set -uo pipefail
tool=$1
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/certs.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fails=0
check() { # description, command...
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then echo "ok: $what"; else echo "FAIL: $what"; fails=$((fails + 1)); fi
}
refused() { # description, command...: must exit 2 with a message on stderr
    local what=$1 err rc
    shift
    err=$("$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 2 ] && [ -n "$err" ]; then echo "ok: refused $what ($err)"; else
        echo "FAIL: $what (rc=$rc)"; fails=$((fails + 1)); fi
}

check "make a CA" "$tool" ca "$dir"
check "make a node cert" "$tool" node "$dir" n1 --dns localhost --ip 127.0.0.1
check "make a client cert" "$tool" client "$dir" alice
check "make an expired cert" "$tool" node "$dir" old --days -1
check "node cert chains to CA" openssl verify -CAfile "$dir/ca.pem" -purpose sslserver "$dir/n1.pem"
check "node cert also works as a client" openssl verify -CAfile "$dir/ca.pem" -purpose sslclient "$dir/n1.pem"
check "client cert chains to CA" openssl verify -CAfile "$dir/ca.pem" -purpose sslclient "$dir/alice.pem"
if openssl verify -CAfile "$dir/ca.pem" -purpose sslserver "$dir/alice.pem" >/dev/null 2>&1; then
    echo "FAIL: client cert must not be a server cert"; fails=$((fails + 1)); fi
out=$(openssl verify -CAfile "$dir/ca.pem" "$dir/old.pem" 2>&1)
if grep -q 'certificate has expired' <<<"$out"; then
    echo "ok: expired cert is expired"; else echo "FAIL: expired cert verifies"; fails=$((fails + 1)); fi
san=$(openssl x509 -in "$dir/n1.pem" -noout -ext subjectAltName)
for want in DNS:n1 DNS:localhost "IP Address:127.0.0.1"; do
    if grep -q "$want" <<<"$san"; then echo "ok: SAN $want"; else echo "FAIL: SAN $want missing"; fails=$((fails + 1)); fi
done
cn=$(openssl x509 -in "$dir/n1.pem" -noout -subject)
grep -q 'CN *= *n1' <<<"$cn" && echo "ok: CN" || { echo "FAIL: CN ($cn)"; fails=$((fails + 1)); }
perm=$(stat -c %a "$dir/n1-key.pem")
[ "$perm" = 600 ] && echo "ok: key mode 600" || { echo "FAIL: key mode $perm"; fails=$((fails + 1)); }
openssl pkey -in "$dir/n1-key.pem" -pubout >"$dir/a" 2>/dev/null
openssl x509 -in "$dir/n1.pem" -pubkey -noout >"$dir/b"
cmp -s "$dir/a" "$dir/b" && echo "ok: key matches cert" || { echo "FAIL: key/cert mismatch"; fails=$((fails + 1)); }

refused "a name with a space" "$tool" node "$dir" "bad name"
refused "a name with a slash" "$tool" node "$dir" "../etc"
refused "an unknown command" "$tool" bogus "$dir"
refused "an unknown flag" "$tool" node "$dir" n2 --color red
refused "a bad IP" "$tool" node "$dir" n2 --ip "1.2.3.4;rm"
refused "a bad DNS name" "$tool" node "$dir" n2 --dns 'a b'
refused "non-numeric days" "$tool" node "$dir" n2 --days soon
refused "a node without a CA" "$tool" node "$dir/empty" n3
refused "a missing flag value" "$tool" node "$dir" n2 --dns

echo "craft-certs: $fails failed"
[ $fails -eq 0 ]
