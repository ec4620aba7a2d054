#!/usr/bin/env bash
# How the cluster's message rate grows with its nodes, on loopback: for 1, 2 and 3 Culex nodes
# over one nats-server (JetStream, replicas 1), every node runs one culex-bench pair at once
# (1 publisher -> 1 subscriber, QoS 1, 64-byte payloads, closed loop), and the deliveries per
# second of all pairs are summed. Two placements: "local" (each pair's publisher and
# subscriber on the same node: traffic no other node wants) and "ring" (the publisher on node
# i, the subscriber on node i+1: every message crosses the backplane; with one node it is
# local).
#
#   scripts/bench-cluster-scale.sh                    # 3 rounds of 8 s per case
#   scripts/bench-cluster-scale.sh --rounds 1 --duration 4 --no-build
#
# Prints a markdown table (medians over rounds). On one host every process shares the same
# cores: this shows the cost per node, not the growth separate hosts would give.
# Environment: CARGO_TARGET_DIR (release builds, default ./target). Needs nats-server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=3
DURATION=8
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-cluster-scale.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v nats-server >/dev/null || { echo "bench-cluster-scale.sh: nats-server is needed" >&2; exit 1; }
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -p culex -p culex-bench)
fi
CULEX="$TARGET/release/culex"
GEN="$TARGET/release/culex-bench"
WORK="$(mktemp -d /tmp/culex-bench-scale.XXXXXX)"
PIDS=()

BENCH_NAME=bench-scale
# shellcheck source=scripts/cluster-bench-lib.sh
source "$ROOT/scripts/cluster-bench-lib.sh"

for round in $(seq "$ROUNDS"); do
    for n in 1 2 3; do
        for placement in local ring; do
            log "round $round/$ROUNDS: $n node(s), $placement"
            start_nats 1
            ports=()
            for i in $(seq "$n"); do start_node "node$i" 1; ports+=("$NODE_PORT"); done
            gens=()
            for i in $(seq 0 $((n - 1))); do
                sub=${ports[$i]}
                [ "$placement" = ring ] && sub=${ports[$(((i + 1) % n))]}
                "$GEN" --port "${ports[$i]}" --label "scale" \
                    -o "$WORK/$placement.$n.$round.$i.json" pubsub --publishers 1 --subscribers 1 \
                    --qos 1 --topic "scale/$i" --sub-port "$sub" --warmup 1 --duration "$DURATION" \
                    --drain 3 >/dev/null 2>&1 &
                gens+=($!)
            done
            for g in "${gens[@]}"; do wait "$g" || log "a generator failed"; done
            stop_all
        done
    done
done

python3 - "$WORK" "$ROUNDS" "$DURATION" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" "$(nproc)" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import glob, json, statistics, sys, time
work, rounds, duration, cpu, cores, commit = sys.argv[1:7]
print(f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} at commit {commit}: {cpu}, {cores} cores; "
      f"{rounds} round(s) of {duration} s; one pair per node, QoS 1; medians of the summed deliveries/s.\n")
print("| nodes | local pairs | ring pairs (every message crosses) |")
print("| --- | --- | --- |")
for n in (1, 2, 3):
    cells = []
    for placement in ("local", "ring"):
        sums, lost = [], 0
        for r in range(1, int(rounds) + 1):
            files = glob.glob(f"{work}/{placement}.{n}.{r}.*.json")
            if len(files) != n:
                continue
            results = [json.load(open(f))["result"] for f in files]
            sums.append(sum(x["delivery_rate"] for x in results))
            lost += sum(x["checks"]["lost"] for x in results)
        cells.append((f"{statistics.median(sums):,.0f} msg/s" if sums else "–") + (f", lost {lost}" if lost else ""))
    print(f"| {n} | " + " | ".join(cells) + " |")
print(f"\nRaw reports: {work}")
PY
