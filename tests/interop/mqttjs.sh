#!/usr/bin/env bash
# MQTT.js interop: the MQTT client used in browsers and Node, over MQTT-over-WebSocket
# (ws://, subprotocol "mqtt"), against the built culex binary.
#
# Usage: tests/interop/mqttjs.sh [PATH_TO_CULEX]
#   default binary: $CULEX_BIN, else ${CARGO_TARGET_DIR:-target}/debug/culex (build it first:
#   cargo build -p culex). Needs node (18 or later) and npm; installs MQTT.js from
#   tests/interop/mqttjs/package-lock.json into tests/interop/mqttjs/node_modules when missing.
# Prints "mqttjs: N passed, M failed"; exits non-zero if anything failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-${CULEX_BIN:-${CARGO_TARGET_DIR:-target}/debug/culex}}
if [[ ! -x $BIN ]]; then
    echo "mqttjs: culex binary not found at $BIN (build it with: cargo build -p culex)" >&2
    exit 2
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "mqttjs: $tool is required" >&2; exit 2; }
done

WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
    if [[ -n $BROKER_PID ]]; then kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# MQTT.js, exactly as locked.
cd "$HERE/mqttjs" || exit 2
if [[ ! -d node_modules/mqtt ]]; then
    if ! npm ci --no-audit --no-fund --loglevel=error >"$WORK/npm.log" 2>&1; then
        npm install --no-audit --no-fund --loglevel=error >>"$WORK/npm.log" 2>&1 || {
            echo "mqttjs: npm could not install MQTT.js:" >&2
            cat "$WORK/npm.log" >&2
            exit 2
        }
    fi
fi

# A broker with one WebSocket listener on a port the OS picks (port 0); the log says which.
cat >"$WORK/culex.conf" <<'EOF'
listener 0 127.0.0.1
protocol websockets
allow_anonymous true
EOF
"$BIN" -c "$WORK/culex.conf" 2>"$WORK/culex.log" &
BROKER_PID=$!
PORT=
for _ in $(seq 1 200); do
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\) (websockets).*/\1/p' "$WORK/culex.log" | head -n1)
    [[ -n $PORT ]] && break
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $PORT ]]; then
    echo "mqttjs: the broker did not start:" >&2
    cat "$WORK/culex.log" >&2
    exit 2
fi

node check.mjs "ws://127.0.0.1:$PORT/mqtt"
rc=$?
if [[ $rc -ne 0 ]]; then
    echo "--- culex log ---"
    cat "$WORK/culex.log"
fi
exit $rc
