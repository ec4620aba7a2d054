#!/usr/bin/env bash
# QoS 1 throughput into an offline persistent session, per persistence_sync policy (issue 4).
# Needs a release build (cargo build --release -p culex) and mosquitto_sub (mosquitto-clients).
# One publisher (culex pub -l, 100 in flight) sends N lines at QoS 1 to a topic an offline
# persistent session subscribes to; every message must be stored before its PUBACK.
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/culex}
N=${N:-20000}
PORT=21999
run() {
  local policy=$1 dir; dir=$(mktemp -d)
  {
    echo "listener $PORT 127.0.0.1"; echo "allow_anonymous true"; echo "sys_interval 0"
    echo "max_queued_messages 1000000"
    if [[ $policy == off ]]; then echo "persistence false"; else
      echo "persistence true"; echo "persistence_location $dir/store"; echo "persistence_sync $policy"; fi
  } > "$dir/c.conf"
  "$BIN" -c "$dir/c.conf" 2> "$dir/log" & local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$dir/log" && break; sleep 0.05; done
  mosquitto_sub -p $PORT -c -i offline -q 1 -t bench/t -W 1 >/dev/null 2>&1 || true
  local t0 t1
  t0=$(date +%s.%N)
  seq 1 "$N" | "$BIN" pub -p $PORT -t bench/t -q 1 -l -M 100
  t1=$(date +%s.%N)
  # all N queued for the offline session?
  local got; got=$(timeout 60 mosquitto_sub -p $PORT -c -i offline -q 1 -t bench/t -C "$N" -W 30 | wc -l)
  kill -TERM $pid; wait $pid || true
  python3 -c "import sys; n=$N; dt=$t1-$t0; print(f'$policy: {n/dt:,.0f} msg/s ({dt:.2f} s for {n}), delivered after: $got')"
  rm -rf "$dir"
}
for round in 1 2 3; do for p in off always batched never; do run $p; done; done
