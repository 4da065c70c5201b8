#!/usr/bin/env bash
# The metrics listener's TLS files in operation (issue 20), on one craftd member with an https
# --listen-metrics-urls, --tls-reload-interval 1s and --client-crl-file:
# (a) the member's client-port certificate rotated in place (same CA, a new serial): a new
#     handshake on the metrics port gets the new certificate, without a restart;
# (b) a truncated certificate at reload is not taken: the member logs why and keeps serving the
#     certificate in force;
# (c) a CRL update revoking the scraper's client certificate: that client's handshake is refused
#     from then on, while a client that is not revoked still scrapes; a CRL not signed by the CA
#     at reload is refused and logged, the one in force kept.
set -uo pipefail
craftd=$1 tool=$2
for c in curl openssl python3; do
    command -v $c >/dev/null || { echo "$c not installed (scripts/deps.sh)"; exit 1; }
done
dir=$(mktemp -d "${TEST_TMPDIR:-/tmp}/metrics_tls.XXXXXX")
pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

c=$dir/c live=$dir/live
"$tool" ca "$c" >/dev/null && "$tool" node "$c" n1 --ip 127.0.0.1 >/dev/null &&
    "$tool" client "$c" scraper >/dev/null && "$tool" client "$c" other >/dev/null || exit 1
"$tool" ca "$dir/x" --cn other-ca >/dev/null || exit 1
mkdir -p "$live"
cp "$c/n1.pem" "$c/n1-key.pem" "$live/"

# crl OUT CA-DIR [CERT...]: a CRL signed by CA-DIR's key revoking each CERT's serial.
crl() {
    python3 - "$@" <<'PY'
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
out, ca_dir, certs = sys.argv[1], sys.argv[2], sys.argv[3:]
ca = x509.load_pem_x509_certificate(open(ca_dir + "/ca.pem", "rb").read())
key = serialization.load_pem_private_key(open(ca_dir + "/ca-key.pem", "rb").read(), None)
now = datetime.datetime.now(datetime.timezone.utc)
b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
     .last_update(now - datetime.timedelta(minutes=1)).next_update(now + datetime.timedelta(days=1)))
for p in certs:
    c = x509.load_pem_x509_certificate(open(p, "rb").read())
    b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                  .revocation_date(now - datetime.timedelta(minutes=1)).build())
pem = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
open(out + ".tmp", "wb").write(pem)
PY
    mv "$1.tmp" "$1" # whole, in one step
}
crl "$live/crl.pem" "$c" || exit 1 # nothing revoked yet

source "$(dirname "${BASH_SOURCE[0]}")/port.sh"
cport=$(port) pport=$(port) mport=$(port)
"$craftd" --name n1 --data-dir "$dir/n1" \
    --listen-client-urls "https://127.0.0.1:$cport" --listen-peer-urls "https://127.0.0.1:$pport" \
    --initial-cluster "n1=https://127.0.0.1:$pport" --heartbeat-interval 50 --election-timeout 300 \
    --listen-metrics-urls "https://127.0.0.1:$mport" --tls-reload-interval 1s \
    --cert-file "$live/n1.pem" --key-file "$live/n1-key.pem" --trusted-ca-file "$c/ca.pem" \
    --client-crl-file "$live/crl.pem" \
    --peer-cert-file "$c/n1.pem" --peer-key-file "$c/n1-key.pem" \
    --peer-trusted-ca-file "$c/ca.pem" >>"$dir/n1.log" 2>&1 &
pid=$!

scrape() { # client-name -> curl's exit status; the body in $dir/body
    curl -s --max-time 5 --cacert "$c/ca.pem" --cert "$c/$1.pem" --key "$c/$1-key.pem" \
        -o "$dir/body" "https://127.0.0.1:$mport/metrics"
}
served() { # the serial of the certificate a new handshake on the metrics port gets
    openssl s_client -connect "127.0.0.1:$mport" -CAfile "$c/ca.pem" -cert "$c/scraper.pem" \
        -key "$c/scraper-key.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null
}
serial() { openssl x509 -noout -serial -in "$1"; }
# until SECONDS CMD...: runs CMD every 0.1 s until it succeeds; its status.
until_ok() {
    local deadline=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt "$deadline" ]; do
        "$@" && return 0
        sleep 0.1
    done
    "$@"
}
scrapes() { scrape "$1" && grep -q '^etcd_server_has_leader 1' "$dir/body"; }
logged() { grep -qF "$1" "$dir/n1.log"; }

until_ok 15 scrapes scraper && ok "scraper scrapes /metrics over https" ||
    { bad "no scrape at start"; tail -5 "$dir/n1.log"; exit 1; }
s0=$(serial "$c/n1.pem")
[ "$(served)" = "$s0" ] && ok "the metrics port serves the start certificate ($s0)" ||
    bad "the metrics port serves '$(served)', the file has $s0"

# --- (a) rotation: same CA, a new serial, in place, no restart ------------------------------
"$tool" node "$c" n1 --ip 127.0.0.1 >/dev/null || exit 1
s1=$(serial "$c/n1.pem")
[ "$s1" != "$s0" ] || { bad "the tool made the same serial twice"; exit 1; }
cp "$c/n1-key.pem" "$live/n1-key.pem.new" && cp "$c/n1.pem" "$live/n1.pem.new"
mv "$live/n1-key.pem.new" "$live/n1-key.pem" && mv "$live/n1.pem.new" "$live/n1.pem"
check_served() { [ "$(served)" = "$1" ]; }
if until_ok 10 check_served "$s1"; then
    ok "after the rotation a new handshake gets the new certificate ($s1), same pid"
else
    bad "after the rotation the metrics port still serves '$(served)', not $s1"
fi
kill -0 "$pid" 2>/dev/null || bad "the member died"
scrapes scraper && ok "scraping after the rotation" || bad "no scrape after the rotation"

# --- (b) a truncated certificate is not taken ------------------------------------------------
head -c 300 "$c/n1.pem" >"$live/n1.pem.new" && mv "$live/n1.pem.new" "$live/n1.pem"
# (the key-then-certificate copy above may have logged a mismatch: look for this reason)
if until_ok 10 logged "TLS reload refused, the certificates in use are kept: metrics listener: cert_file $live/n1.pem:"; then
    ok "the truncated certificate is refused and logged: $(grep -F "kept: metrics listener: cert_file" "$dir/n1.log" | tail -1 | sed 's/.*"msg":"//' | cut -c1-200)"
else
    bad "no log line for the truncated certificate"
fi
[ "$(served)" = "$s1" ] && ok "the certificate in force ($s1) is still served" ||
    bad "after a truncated certificate the metrics port serves '$(served)'"
scrapes scraper && ok "scraping with a truncated certificate file on disk" ||
    bad "no scrape with a truncated certificate on disk"
cp "$c/n1.pem" "$live/n1.pem.new" && mv "$live/n1.pem.new" "$live/n1.pem" # whole again

# --- (c) revocation through a CRL update ------------------------------------------------------
scrapes other && ok "'other' scrapes before the CRL update" || bad "'other' refused before any revocation"
crl "$live/crl.pem" "$c" "$c/scraper.pem" || exit 1
refused() { ! scrape scraper; }
if until_ok 10 refused; then
    ok "after the CRL update the revoked client's handshake is refused (curl exit $(scrape scraper; echo $?))"
else
    bad "the revoked client still scrapes after the CRL update"
fi
logged "metrics listener: refused a client: certificate serial $(serial "$c/scraper.pem" | cut -d= -f2) of /CN=craft-ca is revoked" &&
    ok "the refusal is logged with the serial" || bad "no log line for the revoked client"
scrapes other && ok "'other' (not revoked) still scrapes" || bad "'other' refused after the CRL update"
# A CRL from another CA is refused at reload: the one in force (scraper revoked) stays.
crl "$live/crl.pem" "$dir/x" || exit 1
if until_ok 10 logged "kept: metrics listener: crl_file $live/crl.pem: the CRL of /CN=other-ca is not signed"; then
    ok "a CRL not signed by the CA is refused and logged"
else
    bad "no log line for a CRL from another CA"
fi
! scrape scraper && scrapes other && ok "the CRL in force is kept: scraper still refused, other served" ||
    bad "after a bad CRL: scraper $(scrape scraper; echo $?), other $(scrape other; echo $?)"
kill -0 "$pid" 2>/dev/null && ok "the member ran through it all (pid $pid)" || bad "the member died"
# A clean stop frees the contexts swapped in (under --config=asan a leak fails the exit status).
kill -TERM "$pid"
wait "$pid"
rc=$?
pid=""
[ $rc = 0 ] && ok "the member stops cleanly on SIGTERM" || bad "the member exited $rc on SIGTERM"

[ $fails -eq 0 ] || tail -20 "$dir/n1.log"
echo "$fails failed"
[ $fails -eq 0 ]
