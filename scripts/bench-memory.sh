#!/usr/bin/env bash
# Broker memory, side by side: RSS per idle connection and RSS given back after load.
#
#   scripts/bench-memory.sh --bin old=/tmp/culex-old --bin new=target/release/culex [--mosquitto]
#                           [--rounds 3] [--connections 10000] [--port 29886]
#
# For every round and every broker in turn (fresh process each time, alternating, so that both
# see the same machine load): RSS at start ("idle"); N idle MQTT connections held 2 s and
# closed (culex-bench connections: RSS per connection, connection rate); 4 publishers -> 1
# subscriber at QoS 1, 4 x 250,000 = 1,000,000 messages; 1 publisher -> 8 subscribers at QoS 0,
# 250,000 messages (2,000,000 deliveries); RSS 1 s and 9 s after the last client left.
# Culex gets the settings of scripts/bench.sh (no persistence, no $SYS, errors-only logging,
# 100 in flight / 1000 queued); Mosquitto the equivalent. Needs culex-bench (release) in
# $CARGO_TARGET_DIR/release or on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=3
CONNS=10000
PORT=29886
BINS=()
MOSQ=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BINS+=("$2"); shift ;;
        --mosquitto) MOSQ=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --connections) CONNS="$2"; shift ;;
        --port) PORT="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-memory.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$MOSQ" = 1 ] && BINS+=("mosquitto=$(command -v mosquitto)")
[ ${#BINS[@]} -gt 0 ] || { echo "bench-memory.sh: give at least one --bin NAME=PATH" >&2; exit 2; }
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/culex-bench"
[ -x "$BENCH" ] || BENCH="$(command -v culex-bench)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if ss -ltn | grep -q ":$PORT "; then echo "bench-memory.sh: port $PORT is in use" >&2; exit 1; fi

WORK="$(mktemp -d /tmp/culex-membench.XXXXXX)"
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cat > "$WORK/culex.conf" <<EOC
listener $PORT 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 1000
sys_interval 0
log_type error
persistence false
EOC
cat > "$WORK/mosquitto.conf" <<EOC
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
sys_interval 0
max_inflight_messages 100
max_queued_messages 1000
max_connections -1
log_dest none
EOC
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "| round | broker | RSS idle | per idle connection | conn/s | RSS after $CONNS closed | RSS after 1M + fan-out (+1 s / +9 s) | 4→1 QoS 1 msg/s | 1→8 QoS 0 deliveries/s |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
    for spec in "${BINS[@]}"; do
        name="${spec%%=*}"; bin="${spec#*=}"
        if [ "$(basename "$bin")" = mosquitto ]; then "$bin" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
        else "$bin" -c "$WORK/culex.conf" >"$WORK/$name.log" 2>&1 &
        fi
        PID=$!
        for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
        sleep 1
        idle=$(rss "$PID")
        "$BENCH" --port "$PORT" --broker-pid "$PID" connections --count "$CONNS" --concurrency 32 \
            --hold 2 -o "$WORK/c.json"
        sleep 1; closed=$(rss "$PID")
        "$BENCH" --port "$PORT" --broker-pid "$PID" pubsub --publishers 4 --subscribers 1 --qos 1 \
            --count 250000 --warmup 0 --duration 60 -o "$WORK/a.json"
        "$BENCH" --port "$PORT" --broker-pid "$PID" pubsub --publishers 1 --subscribers 8 --qos 0 \
            --count 250000 --warmup 0 --duration 60 -o "$WORK/b.json"
        sleep 1; after1=$(rss "$PID")
        sleep 8; after9=$(rss "$PID")
        python3 - "$WORK" "$r" "$name" "$idle" "$closed" "$after1" "$after9" <<'PY'
import json, sys
work, r, name, idle, closed, a1, a9 = sys.argv[1:]
c = json.load(open(f"{work}/c.json"))["result"]
a = json.load(open(f"{work}/a.json"))["result"]
b = json.load(open(f"{work}/b.json"))["result"]
mb = lambda kib: f"{int(kib) / 1024:.1f} MB"
print(f"| {r} | {name} | {mb(idle)} | {c['rss_bytes_per_connection']:,.0f} B | {c['connect_rate']:,.0f} "
      f"| {mb(closed)} | {mb(a1)} / {mb(a9)} | {a['delivery_rate']:,.0f} | {b['delivery_rate']:,.0f} |")
PY
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
        sleep 0.5
    done
done
