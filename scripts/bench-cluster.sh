#!/usr/bin/env bash
# Cluster benchmark on loopback: Culex nodes over NATS JetStream next to one Culex node, with
# culex-bench, in the same run.
#
#   scripts/bench-cluster.sh                    # 3 rounds of 8 s per case
#   scripts/bench-cluster.sh --rounds 1 --duration 4 --no-build
#
# Setups: "single" (one node, no cluster), "cluster" (one nats-server with JetStream, replicas
# 1, three nodes; the publisher on node 1, subscribers on nodes 2 and 3) and "cluster-r3"
# (three nats-servers, replicas 3, same nodes). Cases, 64-byte payloads, MQTT 3.1.1: 1 publisher
# -> 2 subscribers at QoS 0 and QoS 1 (closed-loop saturation), QoS 1 at 5,000 msg/s for
# latency, and 1 -> 1 QoS 1 with publisher and (clean-session) subscriber on node 1: traffic no
# other node wants, which interest routing keeps off the backplane. Writes the table (medians over rounds) between the `cluster` markers of
# docs/benchmarks.md (or of --output FILE) and prints it; JSON reports stay in the work
# directory it names. scripts/bench.sh --cluster runs it after the side-by-side run.
#
# Environment: CARGO_TARGET_DIR (release builds, default ./target). Needs nats-server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=3
DURATION=8
BUILD=1
OUT_MD="$ROOT/docs/benchmarks.md"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --output) OUT_MD="$2"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v nats-server >/dev/null || { echo "bench-cluster.sh: nats-server is needed (Debian package nats-server)" >&2; exit 1; }
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -p culex -p culex-bench)
fi
CULEX="$TARGET/release/culex"
GEN="$TARGET/release/culex-bench"
WORK="$(mktemp -d /tmp/culex-bench-cluster.XXXXXX)"
PIDS=()

BENCH_NAME=bench-cluster
# shellcheck source=scripts/cluster-bench-lib.sh
source "$ROOT/scripts/cluster-bench-lib.sh"

CASES=(
    "fanout2_q0|--publishers 1 --subscribers 2 --qos 0|remote"
    "fanout2_q1|--publishers 1 --subscribers 2 --qos 1|remote"
    "rate5k_q1|--publishers 1 --subscribers 2 --qos 1 --rate 5000|remote"
    "local_q1|--publishers 1 --subscribers 1 --qos 1|local"
)

run_cases() { # SETUP PUB_PORT PID SUB_PORTS ROUND
    local setup=$1 port=$2 pid=$3 subs=$4 round=$5 c name args rest where sub_ports
    for c in "${CASES[@]}"; do
        name="${c%%|*}"; rest="${c#*|}"; args="${rest%%|*}"; where="${rest#*|}"
        sub_ports=$subs
        [ "$where" = local ] && sub_ports=$port
        # shellcheck disable=SC2086
        "$GEN" --port "$port" --broker-pid "$pid" --label "$setup" -o "$WORK/$setup.$name.$round.json" \
            pubsub $args --sub-port "$sub_ports" --warmup 1 --duration "$DURATION" --drain 3 \
            || log "$setup: $name failed"
    done
}

for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS: single node"
    NATS_URLS=""
    start_node single
    run_cases single "$NODE_PORT" "$NODE_PID" "$NODE_PORT" "$round"
    stop_all

    for setup in cluster cluster-r3; do
        log "round $round/$ROUNDS: $setup"
        if [ "$setup" = cluster ]; then start_nats 1; r=1; else start_nats 3; r=3; fi
        start_node node1 "$r"; p1=$NODE_PORT; pid1=$NODE_PID
        start_node node2 "$r"; p2=$NODE_PORT
        start_node node3 "$r"; p3=$NODE_PORT
        run_cases "$setup" "$p1" "$pid1" "$p2,$p3" "$round"
        stop_all
    done
done

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$WORK" "$ROUNDS" "$DURATION" "$CPU_MODEL" "$(nproc)" "$(nats-server --version)" "$OUT_MD" "$COMMIT" <<'PY'
import glob, json, re, statistics, sys, time
work, rounds, duration, cpu, cores, nats, out_md, commit = sys.argv[1:9]
setups = ["single", "cluster", "cluster-r3"]
cases = ["fanout2_q0", "fanout2_q1", "rate5k_q1", "local_q1"]
def load(setup, case):
    out = []
    for f in sorted(glob.glob(f"{work}/{setup}.{case}.*.json")):
        out.append(json.load(open(f))["result"])
    return out
names = {
    "fanout2_q0": "1 → 2, QoS 0, saturation",
    "fanout2_q1": "1 → 2, QoS 1, saturation",
    "rate5k_q1": "1 → 2, QoS 1 at 5,000 msg/s",
    "local_q1": "1 → 1 on node 1, QoS 1, saturation",
}
lines = [
    f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} at commit {commit}: {cpu}, {cores} cores; "
    f"{nats}; {rounds} round(s) of {duration} s per case; medians; deliveries per second.",
    "",
    "| case | single | cluster | cluster-r3 |",
    "| --- | --- | --- | --- |",
]
for case in cases:
    cells = []
    for s in setups:
        runs = load(s, case)
        if not runs:
            cells.append("–"); continue
        rate = statistics.median(r["delivery_rate"] for r in runs)
        p99 = statistics.median(r["latency"]["p99_us"] for r in runs) / 1000
        lost = sum(r["checks"]["lost"] for r in runs)
        dup = sum(r["checks"]["duplicates"] for r in runs)
        cells.append(f"{rate:,.0f} msg/s, p99 {p99:.2f} ms" + (f", lost {lost}" if lost else "") + (f", dup {dup}" if dup else ""))
    lines.append(f"| {names[case]} | " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
print(f"\nRaw reports: {work}")
try:
    doc = open(out_md).read()
except OSError:
    doc = ""
pat = re.compile(r"<!-- BEGIN GENERATED: cluster -->.*?<!-- END GENERATED: cluster -->", re.S)
block = f"<!-- BEGIN GENERATED: cluster -->\n{table}\n<!-- END GENERATED: cluster -->"
if pat.search(doc):
    doc = pat.sub(lambda _: block, doc)
else:
    doc += "\n" + block + "\n"
open(out_md, "w").write(doc)
print(f"wrote {out_md}", file=sys.stderr)
PY
