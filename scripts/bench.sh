#!/usr/bin/env bash
# Side-by-side benchmark of Culex, Mosquitto and rumqttd on loopback, with culex-bench.
#
#   scripts/bench.sh                 # full default set: 3 rounds (~10 minutes on 2 cores)
#   scripts/bench.sh --quick         # 1 short round: a smoke run (~2 minutes)
#   scripts/bench.sh --pin           # broker on CPU 0, generator on CPU 1 (taskset)
#   scripts/bench.sh --rounds 5 --duration 10 --brokers "culex mosquitto"
#   scripts/bench.sh --with-metrics  # also measure Culex with metrics and info logging on
#   scripts/bench.sh --no-build --bin-dir DIR   # use prebuilt culex / culex-bench from DIR
#   scripts/bench.sh --cluster       # then the cluster case: scripts/bench-cluster.sh (nats-server)
#
# Every broker gets the same settings: loopback listener, anonymous access, no persistence, no
# $SYS, errors-only logging, 100 QoS 1/2 messages in flight and 1000 queued per client. Then each
# round restarts every broker with its own default limits (Culex and Mosquitto: 20 in flight,
# 1000 queued; rumqttd has no queue limit to default) for one more case, "burst_defaults": a 4 ->
# 1 QoS 1 burst, reported only for loss (what a user who keeps the defaults gets). Each
# broker is started fresh for every round, runs the same scenarios, and is stopped. Results:
# the table between the markers in docs/benchmarks.md (medians over rounds, with ratios) and the
# raw JSON reports in docs/benchmarks/ (one file per run of this script's mode).
#
# Environment: CARGO_TARGET_DIR (release builds go there, default ./target),
# BENCH_CACHE (where rumqttd is installed, default ~/.cache/culex-bench).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
PIN=0
BUILD=1
WITH_METRICS=0
CLUSTER=0
ROUNDS=""
DURATION=""
BROKERS="culex mosquitto rumqttd"
BIN_DIR=""
IDLE_CONNS=""
OUT_MD="$ROOT/docs/benchmarks.md"
INFLIGHT=100
QUEUED=1000

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --pin) PIN=1 ;;
        --no-build) BUILD=0 ;;
        --with-metrics) WITH_METRICS=1 ;;
        --cluster) CLUSTER=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --bin-dir) BIN_DIR="$2"; shift ;;
        --idle-connections) IDLE_CONNS="$2"; shift ;;
        --output) OUT_MD="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    MODE=quick
    ROUNDS="${ROUNDS:-1}"; DURATION="${DURATION:-3}"; WARMUP=1; IDLE_CONNS="${IDLE_CONNS:-2000}"
else
    MODE=full
    ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-8}"; WARMUP=1; IDLE_CONNS="${IDLE_CONNS:-15000}"
fi
[ "$WITH_METRICS" = 1 ] && BROKERS="$BROKERS culex-metrics"

CACHE="${BENCH_CACHE:-$HOME/.cache/culex-bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="${BIN_DIR:-$TARGET/release}"
WORK="$(mktemp -d /tmp/culex-bench.XXXXXX)"
BROKER_PID=""

cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- builds and installs

if [ "$BUILD" = 1 ]; then
    log "building culex and culex-bench (release) into $TARGET"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -p culex -p culex-bench)
fi
CULEX="$BIN_DIR/culex"
GEN="$BIN_DIR/culex-bench"
[ -x "$CULEX" ] && [ -x "$GEN" ] || { echo "bench.sh: $CULEX or $GEN missing" >&2; exit 1; }

MOSQUITTO=""
if [[ " $BROKERS " == *" mosquitto "* ]]; then
    MOSQUITTO="$(command -v mosquitto || true)"
    [ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
    if [ -z "$MOSQUITTO" ]; then
        log "installing mosquitto (Debian)"
        SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
        $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
        # The package starts a system broker on 1883; we use our own ports, leave it be.
        MOSQUITTO=/usr/sbin/mosquitto
    fi
fi

RUMQTTD=""
if [[ " $BROKERS " == *" rumqttd "* ]]; then
    RUMQTTD="$(command -v rumqttd || true)"
    [ -z "$RUMQTTD" ] && [ -x "$CACHE/rumqttd/bin/rumqttd" ] && RUMQTTD="$CACHE/rumqttd/bin/rumqttd"
    if [ -z "$RUMQTTD" ]; then
        log "installing rumqttd 0.20.0 from crates.io into $CACHE/rumqttd"
        mkdir -p "$CACHE"
        # Its lock file pins metrics 0.22.1, which newer compilers reject; fall back to the
        # latest compatible dependency versions if the locked build fails.
        CARGO_TARGET_DIR="$CACHE/rumqttd-target" cargo install rumqttd --version 0.20.0 --locked --root "$CACHE/rumqttd" \
            || CARGO_TARGET_DIR="$CACHE/rumqttd-target" cargo install rumqttd --version 0.20.0 --root "$CACHE/rumqttd"
        RUMQTTD="$CACHE/rumqttd/bin/rumqttd"
    fi
fi

# Thousands of idle connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 200)) ]; then
    IDLE_CONNS=$(( $(ulimit -n) - 200 ))
    log "open-file limit $(ulimit -n): idle connections reduced to $IDLE_CONNS"
fi

# ---------------------------------------------------------------- broker configurations

PORT=21883
METRICS_PORT=21983

culex_conf() { # $1 = with metrics (0/1); DEFAULT_LIMITS=1: the broker's own limits
    local f="$WORK/culex.conf"
    {
        echo "listener $PORT 127.0.0.1"
        echo "allow_anonymous true"
        if [ "${DEFAULT_LIMITS:-0}" != 1 ]; then
            echo "max_inflight_messages $INFLIGHT"
            echo "max_queued_messages $QUEUED"
        fi
        echo "sys_interval 0"
        if [ "$1" = 1 ]; then
            echo "metrics_listener 127.0.0.1:$METRICS_PORT"
            echo "log_type information"
        else
            echo "log_type error"
        fi
    } > "$f"
    # Options that only newer Culex versions know: keep each one the configuration accepts.
    local opt
    for opt in "persistence false" "metrics false"; do
        [ "$1" = 1 ] && [ "$opt" = "metrics false" ] && continue
        cp "$f" "$f.try" && echo "$opt" >> "$f.try"
        if "$CULEX" -c "$f.try" --check >/dev/null 2>&1; then mv "$f.try" "$f"; fi
    done
    rm -f "$f.try"
    echo "$f"
}

mosquitto_conf() {
    local f="$WORK/mosquitto.conf"
    cat > "$f" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
sys_interval 0
max_connections -1
log_dest none
EOF
    if [ "${DEFAULT_LIMITS:-0}" != 1 ]; then
        printf 'max_inflight_messages %s\nmax_queued_messages %s\n' "$INFLIGHT" "$QUEUED" >> "$f"
    fi
    echo "$f"
}

rumqttd_conf() {
    local f="$WORK/rumqttd.toml"
    # v4 = MQTT 3.1.1 listener; no auth, no console, no prometheus, no persistence (rumqttd
    # keeps its commit log in memory). max_inflight_count = in-flight window per connection,
    # max_outgoing_packet_count = packets the router hands a connection at once.
    cat > "$f" <<EOF
id = 0

[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = $INFLIGHT
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $INFLIGHT
    dynamic_filters = true
EOF
    echo "$f"
}

BROKER_TASKSET=()
GEN_TASKSET=()
GEN_THREADS=()
if [ "$PIN" = 1 ]; then
    BROKER_TASKSET=(taskset -c 0)
    GEN_TASKSET=(taskset -c 1)
    GEN_THREADS=(--threads 1)
fi

start_broker() { # $1 = name
    local cmd
    case "$1" in
        culex) cmd=("$CULEX" -c "$(culex_conf 0)") ;;
        culex-metrics) cmd=("$CULEX" -c "$(culex_conf 1)") ;;
        mosquitto) cmd=("$MOSQUITTO" -c "$(mosquitto_conf)") ;;
        rumqttd) cmd=("$RUMQTTD" -q -c "$(rumqttd_conf)") ;;
        *) echo "bench.sh: unknown broker $1" >&2; exit 2 ;;
    esac
    "${BROKER_TASKSET[@]}" "${cmd[@]}" > "$WORK/$1.log" 2>&1 &
    BROKER_PID=$!
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.3
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench.sh: $1 did not start; its log:" >&2
    cat "$WORK/$1.log" >&2
    exit 1
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
    sleep 0.5
}

# ---------------------------------------------------------------- scenarios

# name | culex-bench arguments
SCENARIOS=(
    "fanin4_q0|pubsub --publishers 4 --subscribers 1 --qos 0"
    "fanin4_q1|pubsub --publishers 4 --subscribers 1 --qos 1"
    "fanout8_q0|pubsub --publishers 1 --subscribers 8 --qos 0"
    "fanout8_q1|pubsub --publishers 1 --subscribers 8 --qos 1"
    "p2p_q0|pubsub --publishers 1 --subscribers 1 --qos 0"
    "rate5k_q1|pubsub --publishers 1 --subscribers 1 --qos 1 --rate 5000"
    "rate20k_q1|pubsub --publishers 1 --subscribers 1 --qos 1 --rate 20000"
)

RAW="$WORK/raw"
mkdir -p "$RAW"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
T0=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
    for broker in $BROKERS; do
        log "round $round/$ROUNDS: $broker (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        cut -d' ' -f1 /proc/loadavg >> "$WORK/loadavg"
        start_broker "$broker"
        # Idle connections first, on a fresh broker: connection rate and RSS per connection.
        "${GEN_TASKSET[@]}" "$GEN" "${GEN_THREADS[@]}" --port "$PORT" --broker-pid "$BROKER_PID" \
            --label "$broker" -o "$RAW/$broker.idle.$round.json" \
            connections --count "$IDLE_CONNS" --concurrency 32 --hold 2 \
            || log "$broker: idle connections run failed"
        for s in "${SCENARIOS[@]}"; do
            name="${s%%|*}"; args="${s#*|}"
            # shellcheck disable=SC2086
            "${GEN_TASKSET[@]}" "$GEN" "${GEN_THREADS[@]}" --port "$PORT" --broker-pid "$BROKER_PID" \
                --label "$broker" -o "$RAW/$broker.$name.$round.json" \
                $args --warmup "$WARMUP" --duration "$DURATION" --drain 3 \
                || log "$broker: $name failed"
        done
        stop_broker
        # The same broker with its default limits: does a QoS 1 burst lose acknowledged messages?
        DEFAULT_LIMITS=1 start_broker "$broker"
        "${GEN_TASKSET[@]}" "$GEN" "${GEN_THREADS[@]}" --port "$PORT" --broker-pid "$BROKER_PID" \
            --label "$broker" -o "$RAW/$broker.burst_defaults.$round.json" \
            pubsub --publishers 4 --subscribers 1 --qos 1 --warmup "$WARMUP" --duration "$DURATION" --drain 3 \
            || log "$broker: burst_defaults failed"
        stop_broker
    done
done
ELAPSED=$(( $(date +%s) - T0 ))
log "measurements done in ${ELAPSED}s"

# ---------------------------------------------------------------- report

mkdir -p "$ROOT/docs/benchmarks"
RAW_JSON="$ROOT/docs/benchmarks/$MODE.json"
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
MOSQ_VERSION="$([ -n "$MOSQUITTO" ] && "$MOSQUITTO" -h 2>/dev/null | head -1 || true)"
RUMQ_VERSION="$([ -n "$RUMQTTD" ] && "$RUMQTTD" --version 2>/dev/null || true)"
CULEX_VERSION="$("$CULEX" --version 2>/dev/null || true)"
GIT_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
GIT_DIRTY="$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -qv '^??' && echo " (with uncommitted changes)" || true)"
CMDLINE="scripts/bench.sh"
[ "$QUICK" = 1 ] && CMDLINE="$CMDLINE --quick"
[ "$PIN" = 1 ] && CMDLINE="$CMDLINE --pin"
[ "$WITH_METRICS" = 1 ] && CMDLINE="$CMDLINE --with-metrics"

cut -d' ' -f1 /proc/loadavg >> "$WORK/loadavg"
LOADAVG="$(sort -n "$WORK/loadavg" | sed -n '1p;$p' | paste -sd' ' -)"
export LOADAVG
export RAW RAW_JSON OUT_MD MODE ROUNDS DURATION WARMUP IDLE_CONNS BROKERS STARTED ELAPSED CPU_MODEL \
    MOSQ_VERSION RUMQ_VERSION CULEX_VERSION GIT_REV GIT_DIRTY CMDLINE PIN INFLIGHT QUEUED
python3 - <<'PY'
import glob, json, os, re, statistics

env = os.environ
brokers = env["BROKERS"].split()
runs = []
for path in sorted(glob.glob(os.path.join(env["RAW"], "*.json"))):
    broker, scenario, rnd = os.path.basename(path)[:-5].rsplit(".", 2)
    with open(path) as f:
        runs.append({"broker": broker, "scenario": scenario, "round": int(rnd), "report": json.load(f)})

def values(broker, scenario, get):
    out = []
    for r in runs:
        if r["broker"] == broker and r["scenario"] == scenario:
            try:
                v = get(r["report"]["result"])
            except (KeyError, TypeError):
                v = None
            if v is not None:
                out.append(v)
    return out

def median(broker, scenario, get):
    v = values(broker, scenario, get)
    return statistics.median(v) if v else None

def cpu(r):
    return r["broker"]["cpu_us_per_delivery"]

# (label, scenario, getter, unit, scale, higher_is_better, digits)
rows = [
    ("4 publishers → 1 subscriber, QoS 0 (msg/s)", "fanin4_q0", lambda r: r["delivery_rate"], 1, True, 0),
    ("4 publishers → 1 subscriber, QoS 1 (msg/s)", "fanin4_q1", lambda r: r["delivery_rate"], 1, True, 0),
    ("1 publisher → 8 subscribers, QoS 0 (deliveries/s)", "fanout8_q0", lambda r: r["delivery_rate"], 1, True, 0),
    ("1 publisher → 8 subscribers, QoS 1 (deliveries/s)", "fanout8_q1", lambda r: r["delivery_rate"], 1, True, 0),
    ("1 publisher → 1 subscriber, QoS 0 (msg/s)", "p2p_q0", lambda r: r["delivery_rate"], 1, True, 0),
    ("QoS 1 at 5,000 msg/s, end-to-end p99 (ms)", "rate5k_q1", lambda r: r["latency"]["p99_us"], 1e-3, False, 2),
    ("QoS 1 at 5,000 msg/s, end-to-end p50 (ms)", "rate5k_q1", lambda r: r["latency"]["p50_us"], 1e-3, False, 2),
    ("QoS 1 at 20,000 msg/s, end-to-end p99 (ms)", "rate20k_q1", lambda r: r["latency"]["p99_us"], 1e-3, False, 2),
    ("broker RSS per idle connection (KB)", "idle", lambda r: r["rss_bytes_per_connection"], 1e-3, False, 2),
    ("connection rate, %s connections (conn/s)" % env["IDLE_CONNS"], "idle", lambda r: r["connect_rate"], 1, True, 0),
    ("broker CPU per message, 1→1 QoS 0 (µs)", "p2p_q0", cpu, 1, False, 2),
    ("broker CPU per message, 4→1 QoS 0 (µs)", "fanin4_q0", cpu, 1, False, 2),
    ("broker CPU per message, 4→1 QoS 1 (µs)", "fanin4_q1", cpu, 1, False, 2),
    ("broker CPU per delivery, 1→8 QoS 0 (µs)", "fanout8_q0", cpu, 1, False, 2),
    ("broker RSS at the end of a round (MB)", "rate20k_q1", lambda r: r["broker"]["rss_after_drain_kib"], 1.024e-3, False, 1),
]

def fmt(v, digits):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"

peers = [b for b in brokers if b != "culex"]
head = "| case | " + " | ".join(brokers) + " | " + " | ".join(f"culex / {p}" for p in peers) + " |"
lines = [head, "|" + "---|" * (1 + len(brokers) + len(peers))]
for label, scen, get, scale, higher, digits in rows:
    meds = {b: median(b, scen, get) for b in brokers}
    cells = [fmt(None if meds[b] is None else meds[b] * scale, digits) for b in brokers]
    ratios = []
    for p in peers:
        c, v = meds.get("culex"), meds.get(p)
        if c is None or v is None or v == 0:
            ratios.append("–")
        else:
            ratio = c / v
            good = ratio >= 1 if higher else ratio <= 1
            ratios.append(f"{ratio:.2f}×" + ("" if good else " ✗"))
    lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

checks = ["| scenario | " + " | ".join(f"{b} lost / dup / out-of-order" for b in brokers) + " |",
          "|" + "---|" * (1 + len(brokers))]
for scen in ["fanin4_q0", "fanin4_q1", "fanout8_q0", "fanout8_q1", "p2p_q0", "rate5k_q1", "rate20k_q1", "burst_defaults"]:
    cells = []
    for b in brokers:
        rs = [r["report"]["result"]["checks"] for r in runs if r["broker"] == b and r["scenario"] == scen]
        if not rs:
            cells.append("–")
            continue
        exp = sum(c["expected_deliveries"] for c in rs)
        lost = sum(c["lost"] for c in rs)
        cells.append(f"{lost:,} ({100.0 * lost / exp if exp else 0:.3f} %) / "
                     f"{sum(c['duplicates'] for c in rs):,} / {sum(c['out_of_order'] for c in rs):,}")
    checks.append(f"| {scen} | " + " | ".join(cells) + " |")

versions = [f"Culex: `{env['CULEX_VERSION']}` at commit `{env['GIT_REV']}`{env['GIT_DIRTY']}"]
if "mosquitto" in brokers:
    versions.append(f"Mosquitto: `{env['MOSQ_VERSION']}` (Debian package)")
if "rumqttd" in brokers:
    versions.append(f"rumqttd: `{env['RUMQ_VERSION']}` (crates.io, `cargo install rumqttd --version 0.20.0`)")
section = f"""<!-- BEGIN GENERATED: {env['MODE']} -->
### {"Quick smoke run" if env['MODE'] == "quick" else "Full run"} ({env['STARTED']})

Command: `{env['CMDLINE']}` — {env['ROUNDS']} round(s), {env['DURATION']} s measured after {env['WARMUP']} s
warm-up per case, {env['IDLE_CONNS']} idle connections; medians over rounds; took {env['ELAPSED']} s.
Machine: 2-core sandbox, loopback (`{env['CPU_MODEL']}`, {os.cpu_count()} CPUs), broker and generator
{"pinned to CPU 0 and CPU 1" if env['PIN'] == "1" else "not pinned (sharing both cores)"}; 1-minute load
average at the round boundaries (min max): {env['LOADAVG']} — anything well above the benchmark's own
load means other work shared the machine and the numbers are noisier.
Brokers measured in this run: {"; ".join(versions)}.
Limits for all: {env['INFLIGHT']} QoS 1/2 messages in flight and {env['QUEUED']} queued per client; no
persistence, no authentication, no `$SYS`, errors-only logging{"; `culex-metrics` = Culex with the metrics endpoint and info logging on" if "culex-metrics" in brokers else ""}.
Payload 64 bytes, MQTT 3.1.1. Ratios are Culex ÷ peer; ✗ marks a case where Culex is behind
(lower throughput, or higher latency / memory / CPU). Raw reports: `docs/benchmarks/{env['MODE']}.json`.

""" + "\n".join(lines) + """

Loss, duplicates and ordering over all rounds (QoS 0 loss is a broker dropping messages for a
subscriber that falls behind; QoS 1 should have none):

""" + "\n".join(checks) + f"""
<!-- END GENERATED: {env['MODE']} -->"""

with open(env["RAW_JSON"], "w") as f:
    json.dump({"started": env["STARTED"], "command": env["CMDLINE"], "mode": env["MODE"],
               "rounds": int(env["ROUNDS"]), "brokers": brokers, "runs": runs}, f, indent=1)
    f.write("\n")

md = env["OUT_MD"]
text = open(md).read() if os.path.exists(md) else "# Benchmarks\n\n"
pat = re.compile(r"<!-- BEGIN GENERATED: %s -->.*?<!-- END GENERATED: %s -->" % (env["MODE"], env["MODE"]), re.S)
if pat.search(text):
    text = pat.sub(lambda _: section, text)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
with open(md, "w") as f:
    f.write(text)
PY
log "wrote $OUT_MD and $RAW_JSON"
rm -rf "$WORK"

# ---------------------------------------------------------------- the cluster case

if [ "$CLUSTER" = 1 ]; then
    log "cluster case: scripts/bench-cluster.sh"
    CARGO_TARGET_DIR="$TARGET" bash "$ROOT/scripts/bench-cluster.sh" --no-build \
        --rounds "$ROUNDS" --duration "$DURATION" --output "$OUT_MD"
fi
