#!/usr/bin/env bash
# TLS interop: Mosquitto's own clients (mosquitto_pub / mosquitto_sub with --cafile) against
# the built culex binary, with certificates made by the openssl CLI.
#
# Usage: tests/interop/tls.sh [PATH_TO_CULEX]
#   default binary: $CULEX_BIN, else ${CARGO_TARGET_DIR:-target}/debug/culex (build it first:
#   cargo build -p culex). Needs: openssl, mosquitto-clients, python3 (for free ports).
# Prints "tls-interop: N passed, M failed"; exits non-zero if anything failed.
set -u

BIN=${1:-${CULEX_BIN:-${CARGO_TARGET_DIR:-target}/debug/culex}}
if [[ ! -x $BIN ]]; then
    echo "tls-interop: culex binary not found at $BIN (build it with: cargo build -p culex)" >&2
    exit 2
fi
# The script changes directory later (certificates are made in a temp dir): use an absolute path.
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
for tool in openssl mosquitto_pub mosquitto_sub python3; do
    command -v "$tool" >/dev/null || { echo "tls-interop: $tool is required" >&2; exit 2; }
done

WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
    if [[ -n $BROKER_PID ]]; then kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
check() { # check "name" command... : passes when the command succeeds
    local name=$1; shift
    if "$@" >"$WORK/last.out" 2>&1; then ok "$name"; else fail "$name"; sed 's/^/       /' "$WORK/last.out"; fi
}
refused() { # refused "name" command... : passes when the command fails
    local name=$1; shift
    if "$@" >"$WORK/last.out" 2>&1; then fail "$name (unexpectedly succeeded)"; else ok "$name"; fi
}

# --- Certificates ------------------------------------------------------------------------------
cd "$WORK" || exit 2
q() { "$@" >/dev/null 2>&1 || { echo "tls-interop: failed: $*" >&2; exit 2; }; }
make_ca() { # make_ca NAME
    q openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1"
}
make_ca ca
make_ca otherca
# Server: an EC key in SEC1 form ("BEGIN EC PRIVATE KEY"), SANs localhost and 127.0.0.1.
q openssl ecparam -name prime256v1 -genkey -noout -out server.key
q openssl req -new -key server.key -out server.csr -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext
# Client: an RSA key in PKCS#1 form, CN alice.
q openssl genrsa -traditional -out client.key 2048
q openssl req -new -key client.key -out client.csr -subj "/CN=alice"
printf 'extendedKeyUsage=clientAuth\n' > client.ext
q openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_TLS=$(free_port)
P_MTLS=$(free_port)
P_TLS13=$(free_port)

cat > culex.conf <<CONF
# Server-authenticated TLS.
listener $P_TLS 127.0.0.1
certfile server.pem
keyfile server.key
# Client certificates required.
listener $P_MTLS 127.0.0.1
certfile server.pem
keyfile server.key
cafile ca.pem
require_certificate true
# TLS 1.3 only.
listener $P_TLS13 127.0.0.1
certfile server.pem
keyfile server.key
tls_version tlsv1.3
allow_anonymous true
CONF

check "culex --check accepts the TLS configuration" "$BIN" --check -c culex.conf

# Relative paths are relative to the working directory, as in Mosquitto.
"$BIN" -c culex.conf >broker.log 2>&1 &
BROKER_PID=$!
for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$P_TLS13") 2>/dev/null; then break; fi
    sleep 0.1
done

TLS=(-h localhost --cafile ca.pem)

# Retained message: no race between publisher and subscriber.
check "mosquitto_pub --cafile (retained)" \
    mosquitto_pub "${TLS[@]}" -p "$P_TLS" -t interop/tls/retained -m hello-tls -r -q 1
check "mosquitto_sub --cafile receives it" bash -c \
    "out=\$(mosquitto_sub -h localhost --cafile ca.pem -p $P_TLS -t interop/tls/retained -C 1 -W 10) && [[ \$out == hello-tls ]]"

# Live message, MQTT 5, QoS 2.
mosquitto_sub "${TLS[@]}" -p "$P_TLS" -V mqttv5 -t interop/tls/live -C 1 -W 15 -q 2 >live.out 2>&1 &
SUB=$!
sleep 1
check "mosquitto_pub --cafile -V mqttv5 -q 2" \
    mosquitto_pub "${TLS[@]}" -p "$P_TLS" -V mqttv5 -t interop/tls/live -m live-message -q 2
if wait "$SUB" && [[ $(cat live.out) == live-message ]]; then ok "mosquitto_sub -V mqttv5 receives the live message"; else fail "mosquitto_sub -V mqttv5 receives the live message"; sed 's/^/       /' live.out; fi

refused "a client trusting another CA refuses the server" \
    mosquitto_pub -h localhost --cafile otherca.pem -p "$P_TLS" -t interop/tls/x -m x
refused "require_certificate refuses a client without a certificate" \
    mosquitto_pub "${TLS[@]}" -p "$P_MTLS" -t interop/tls/x -m x -q 1
check "require_certificate accepts a client certificate (PKCS#1 key)" \
    mosquitto_pub "${TLS[@]}" -p "$P_MTLS" --cert client.pem --key client.key -t interop/tls/x -m x -q 1
# (mosquitto_pub --tls-version is a minimum too, so a TLS 1.2-only client is openssl s_client.)
refused "tls_version tlsv1.3 refuses a TLS 1.2 client" bash -c \
    "openssl s_client -connect 127.0.0.1:$P_TLS13 -tls1_2 -CAfile ca.pem </dev/null"
check "the default (tlsv1.2) accepts a TLS 1.2 client" bash -c \
    "openssl s_client -connect 127.0.0.1:$P_TLS -tls1_2 -CAfile ca.pem -verify_return_error </dev/null"
check "tls_version tlsv1.3 accepts a TLS 1.3 client" \
    mosquitto_pub "${TLS[@]}" -p "$P_TLS13" --tls-version tlsv1.3 -t interop/tls/x -m x -q 1

if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    fail "broker still running"
    sed 's/^/       /' broker.log
fi

# A key that does not match its certificate: the broker refuses to start, naming the option.
sed "s/^keyfile server.key$/keyfile client.key/" culex.conf > mismatch.conf
if "$BIN" -c mismatch.conf >mismatch.log 2>&1; then
    fail "mismatched keyfile is a startup error"
elif grep -q "keyfile client.key: does not match certfile server.pem" mismatch.log; then
    ok "mismatched keyfile is a startup error naming the option and files"
else
    fail "mismatched keyfile is a startup error naming the option and files"
    sed 's/^/       /' mismatch.log
fi

echo "tls-interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
