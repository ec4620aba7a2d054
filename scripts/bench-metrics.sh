#!/usr/bin/env bash
# Metrics overhead (issue 6): 1 publisher -> 8 subscribers, QoS 0, Culex without and with the
# metrics endpoint scraped every second, $SYS every 10 s and info logging; alternating runs.
# Needs release builds of culex and culex-bench, and curl.
set -euo pipefail
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
run() {
  local mode=$1 dir; dir=$(mktemp -d)
  { echo "listener 21884 127.0.0.1"; echo "allow_anonymous true"; echo "max_inflight_messages 100"; echo "max_queued_messages 1000"
    if [[ $mode == metrics ]]; then echo "metrics_listener 127.0.0.1:0"; echo "sys_interval 10"; else echo "sys_interval 0"; echo "log_type error"; fi; } > $dir/c.conf
  $BIN/culex -c $dir/c.conf 2> $dir/log & local pid=$!
  for _ in $(seq 100); do grep -q "listening on" $dir/log && break; sleep 0.05; done
  # scrape once a second while measuring, as Prometheus would (faster than its default 15 s)
  local maddr; maddr=$(grep -o "metrics on [0-9.:]*" $dir/log | awk '{print $3}' || true)
  local scr=""; if [[ -n "$maddr" ]]; then (while kill -0 $pid 2>/dev/null; do curl -s "http://$maddr/metrics" >/dev/null || true; sleep 1; done) & scr=$!; fi
  $BIN/culex-bench --port 21884 --broker-pid $pid pubsub --publishers 1 --subscribers 8 --qos 0 --duration 5 -o $dir/out.json >/dev/null 2>&1
  python3 - "$mode" $dir/out.json <<'PY'
import json,sys
d=json.load(open(sys.argv[2]))
def find(o,k):
    if isinstance(o,dict):
        for kk,v in o.items():
            if kk==k: return v
            r=find(v,k)
            if r is not None: return r
    return None
print(sys.argv[1], "deliveries/s:", round(find(d,"delivery_rate") or 0), "cpu us/delivery:", find(d,"broker_cpu_us_per_delivery") or find(d,"cpu_us_per_delivery"))
PY
  kill -TERM $pid; wait $pid || true; [[ -n "$scr" ]] && kill $scr 2>/dev/null || true
  rm -rf $dir
}
for r in 1 2 3 4 5; do run plain; run metrics; done
