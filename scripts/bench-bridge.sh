#!/usr/bin/env bash
# Bridge measurements (issue 5), Culex and Mosquitto side by side in the same run:
#   1. throughput through a bridge: culex-bench publishes on the local broker, its subscriber
#      reads from the remote broker, which gets the messages over the local broker's bridge
#      (`topic bench/# out QOS`, topics unchanged);
#   2. reconnect time: the remote is killed and started again; the time from "the remote
#      accepts connections" to the local broker's bridge state notification `1`.
# Needs release builds of culex and culex-bench (BIN_DIR, default $CARGO_TARGET_DIR/release),
# mosquitto and mosquitto_sub. Usage: scripts/bench-bridge.sh [ROUNDS] [SECONDS]
set -euo pipefail
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
ROUNDS=${1:-3}
SECS=${2:-5}
LOCAL=22883
REMOTE=22884
WORK=$(mktemp -d); echo "work dir: $WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$WORK"' EXIT

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.02
  done
  echo "port $1 never opened" >&2
  return 1
}

# start_remote BROKER: sets RPID (started from this shell, so `wait` works)
start_remote() {
  if [[ $1 == culex ]]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nsys_interval 0\nlog_type error\n' \
      "$REMOTE" > "$WORK/remote.conf"
    "$BIN_DIR/culex" -c "$WORK/remote.conf" >/dev/null 2>> "$WORK/remote.log" &
    RPID=$!
  else
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000\n' \
      "$REMOTE" > "$WORK/remote.conf"
    mosquitto -c "$WORK/remote.conf" >/dev/null 2>> "$WORK/remote.log" &
    RPID=$!
  fi
}

# start_local BROKER QOS: sets LPID
start_local() {
  local qos=$2
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000\n' \
    "$LOCAL" > "$WORK/local.conf"
  printf 'connection b\naddress 127.0.0.1:%s\ntopic bench/# out %s\nremote_clientid bench-bridge\n' \
    "$REMOTE" "$qos" >> "$WORK/local.conf"
  printf 'cleansession false\nrestart_timeout 1 2\nkeepalive_interval 10\nnotifications true\n' \
    >> "$WORK/local.conf"
  if [[ $1 == culex ]]; then
    echo "log_type error" >> "$WORK/local.conf"
    "$BIN_DIR/culex" -c "$WORK/local.conf" >/dev/null 2>> "$WORK/local.log" &
  else
    mosquitto -c "$WORK/local.conf" >/dev/null 2>> "$WORK/local.log" &
  fi
  LPID=$!
}

state_topic='$SYS/broker/connection/bench-bridge/state'

wait_state() { # PORT VALUE: waits until the retained bridge state is VALUE
  for _ in $(seq 500); do
    [[ $(mosquitto_sub -p "$1" -t "$state_topic" -C 1 -W 2 2>/dev/null || true) == "$2" ]] && return 0
    sleep 0.01
  done
  echo "bridge state never became $2; local log:" >&2
  tail -20 "$WORK/local.log" >&2
  return 1
}

throughput() { # BROKER QOS
  start_remote "$1"; wait_port $REMOTE
  start_local "$1" "$2"; wait_port $LOCAL
  wait_state $LOCAL 1
  "$BIN_DIR/culex-bench" --port $LOCAL --broker-pid "$LPID" --label "$1" pubsub \
    --sub-port $REMOTE --topic bench/t --qos "$2" --publishers 1 --subscribers 1 \
    --warmup 1 --duration "$SECS" -o "$WORK/out.json" >/dev/null
  python3 - "$WORK/out.json" "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
c, lat = r["checks"], r["latency"]
print(f"throughput {sys.argv[2]:9} qos {sys.argv[3]}: {r['delivery_rate']:>9,.0f} msg/s through the bridge, "
      f"p50 {lat['p50_us']:,.0f} us, p99 {lat['p99_us']:,.0f} us, lost {c['lost']}, dup {c['duplicates']}, out of order {c['out_of_order']}")
EOF
  kill "$LPID" "$RPID"; wait "$LPID" "$RPID" 2>/dev/null || true
}

reconnect() { # BROKER
  local t0 t1
  start_remote "$1"; wait_port $REMOTE
  start_local "$1" 1; wait_port $LOCAL
  wait_state $LOCAL 1
  kill -9 "$RPID"; wait "$RPID" 2>/dev/null || true
  wait_state $LOCAL 0
  start_remote "$1"; wait_port $REMOTE
  t0=$(date +%s%N)
  wait_state $LOCAL 1
  t1=$(date +%s%N)
  echo "reconnect  $1: $(( (t1 - t0) / 1000000 )) ms from the remote accepting to bridge state 1 (restart_timeout 1 2)"
  kill "$LPID" "$RPID"; wait "$LPID" "$RPID" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(uname -r); rounds: $ROUNDS, ${SECS}s each"
for round in $(seq "$ROUNDS"); do
  echo "-- round $round"
  for broker in culex mosquitto; do
    for qos in 0 1; do throughput $broker $qos; done
    reconnect $broker
  done
done
