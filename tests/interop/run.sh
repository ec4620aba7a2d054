#!/usr/bin/env bash
# Interoperability checks: a built culex binary against independent MQTT clients.
#
#   bash tests/interop/run.sh [PATH/TO/culex]      (default: target/debug/culex)
#
# Starts culex on 127.0.0.1 with an ephemeral port (a temporary mosquitto.conf with
# `listener 0 127.0.0.1`; the port is read from the `listening on 127.0.0.1:PORT` log line),
# then checks with mosquitto_pub / mosquitto_sub (Debian package mosquitto-clients) for MQTT
# 3.1, 3.1.1 and 5.0: QoS 0/1/2 round trips, retained messages, wills, persistent sessions.
# Then runs tests/interop/paho_test.py (paho-mqtt 2.x) against the same broker.
#
# Prints one line per check and finally `interop: N passed, M failed`; exits non-zero on any
# failure. Every wait is bounded: subscribers run with -W, polls have deadlines.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-target/debug/culex}"
HOST=127.0.0.1
# Seconds a subscriber waits for its messages (mosquitto_sub -W) and polls wait for events.
WAIT=10

if [[ ! -x "$BIN" ]]; then
    echo "interop: culex binary '$BIN' not found or not executable (build it with: cargo build -p culex)" >&2
    exit 2
fi
for tool in mosquitto_pub mosquitto_sub python3 stdbuf timeout; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "interop: '$tool' is not installed (apt-get install mosquitto-clients python3)" >&2
        exit 2
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/culex-interop.XXXXXX")"
BROKER_PID=""
BG_PIDS=()

cleanup() {
    local rc=$?
    local p
    for p in "${BG_PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        # Bounded wait for a clean exit, then force.
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$BROKER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f "$WORK/culex.log" ]]; then
        echo "---- culex log (last 40 lines) ----" >&2
        tail -n 40 "$WORK/culex.log" >&2 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASSED=0
FAILED=0
FAILED_NAMES=()

pass() {
    PASSED=$((PASSED + 1))
    echo "ok   - $1"
}

fail() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    echo "FAIL - $1: $2"
}

# ---------------------------------------------------------------------------------------------
# Start the broker.

cat >"$WORK/culex.conf" <<EOF
listener 0 $HOST
allow_anonymous true
EOF

NO_COLOR=1 RUST_LOG=info "$BIN" -c "$WORK/culex.conf" </dev/null >"$WORK/culex.out" 2>"$WORK/culex.log" &
BROKER_PID=$!

PORT=""
deadline=$((SECONDS + 20))
while [[ -z "$PORT" ]]; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "interop: culex exited during startup" >&2
        cat "$WORK/culex.log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "interop: culex did not log 'listening on $HOST:PORT' within 20 s" >&2
        exit 1
    fi
    PORT="$(sed -e 's/\x1b\[[0-9;]*m//g' "$WORK/culex.log" |
        sed -n "s/.*listening on $HOST:\([0-9][0-9]*\).*/\1/p" | head -n 1 || true)"
    [[ -n "$PORT" ]] || sleep 0.05
done
echo "interop: culex (pid $BROKER_PID) listening on $HOST:$PORT"

# ---------------------------------------------------------------------------------------------
# Helpers.

# pub VERSION ARGS... : mosquitto_pub against the broker.
pub() {
    local v="$1"
    shift
    timeout "$WAIT" mosquitto_pub -h "$HOST" -p "$PORT" -V "$v" "$@"
}

# start_sub NAME VERSION ARGS... : starts mosquitto_sub in the background with debug output
# into $WORK/NAME.out and waits (bounded) until its SUBACK arrived. Messages are printed as
# `MSG|qos|retain|topic|payload`, so they can be told apart from the debug lines.
start_sub() {
    local name="$1" v="$2"
    shift 2
    # stdbuf: mosquitto_sub's debug lines are block-buffered when stdout is a file, and the
    # SUBACK line is what tells us the subscription is in place.
    stdbuf -oL -eL mosquitto_sub -h "$HOST" -p "$PORT" -V "$v" -d -W "$WAIT" \
        -F 'MSG|%q|%r|%t|%p' "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local pid=$!
    BG_PIDS+=("$pid")
    eval "PID_$name=$pid"
    local deadline=$((SECONDS + WAIT))
    while ! grep -q "received SUBACK" "$WORK/$name.out" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.02
    done
}

# wait_sub NAME : waits for the background subscriber NAME to exit (its -C count reached or -W
# timeout); returns its exit status.
wait_sub() {
    local pid
    eval "pid=\$PID_$1"
    local rc=0
    wait "$pid" || rc=$?
    return "$rc"
}

# messages NAME : the messages subscriber NAME printed, one per line.
messages() {
    grep '^MSG|' "$WORK/$1.out" || true
}

# expect NAME CHECK EXPECTED : compares what NAME received with EXPECTED.
expect() {
    local name="$1" check="$2" expected="$3" got
    got="$(messages "$name")"
    if [[ "$got" == "$expected" ]]; then
        pass "$check"
    else
        fail "$check" "expected [$(echo "$expected" | tr '\n' ';')] got [$(echo "$got" | tr '\n' ';')]"
    fi
}

# ---------------------------------------------------------------------------------------------
# QoS 0/1/2 round trips, each protocol version (subscriber and publisher same version and QoS).

for v in mqttv31 mqttv311 mqttv5; do
    for q in 0 1 2; do
        check="mosquitto $v QoS $q round trip (3 messages, in order)"
        name="rt_${v}_$q"
        topic="interop/mosq/rt/$v/$q"
        if ! start_sub "$name" "$v" -q "$q" -t "$topic" -C 3; then
            fail "$check" "subscriber got no SUBACK within ${WAIT}s"
            continue
        fi
        if ! printf 'first %s\nsecond %s\nthird %s\n' "$q" "$q" "$q" | pub "$v" -q "$q" -t "$topic" -l; then
            fail "$check" "mosquitto_pub failed"
            continue
        fi
        wait_sub "$name" || true
        expect "$name" "$check" "MSG|$q|0|$topic|first $q
MSG|$q|0|$topic|second $q
MSG|$q|0|$topic|third $q"
    done
done

# Mixed versions: a 3.1 publisher reaches a 5.0 subscriber and vice versa; QoS is downgraded
# to the subscription's.
check="mosquitto v3.1 QoS 2 publish to v5 QoS 1 subscriber (downgraded to 1)"
if start_sub mixed1 mqttv5 -q 1 -t interop/mosq/mixed/1 -C 1; then
    pub mqttv31 -q 2 -t interop/mosq/mixed/1 -m across || true
    wait_sub mixed1 || true
    expect mixed1 "$check" "MSG|1|0|interop/mosq/mixed/1|across"
else
    fail "$check" "subscriber got no SUBACK"
fi
check="mosquitto v5 QoS 1 publish to v3.1.1 QoS 2 subscriber (stays 1)"
if start_sub mixed2 mqttv311 -q 2 -t 'interop/mosq/mixed/+' -C 1; then
    pub mqttv5 -q 1 -t interop/mosq/mixed/2 -m back || true
    wait_sub mixed2 || true
    expect mixed2 "$check" "MSG|1|0|interop/mosq/mixed/2|back"
else
    fail "$check" "subscriber got no SUBACK"
fi

# ---------------------------------------------------------------------------------------------
# Retained messages: delivered to a later subscriber with the retain flag; replaced; cleared by
# an empty retained publish. The subscriber runs with --retained-only and stops at the first
# live (non-retained) message, which the test publishes after SUBACK as an end marker.

for v in mqttv311 mqttv5; do
    base="interop/mosq/retain/$v"
    check="mosquitto $v retained message delivered to a later subscriber"
    pub "$v" -q 1 -r -t "$base/kept" -m "old value" || true
    pub "$v" -q 1 -r -t "$base/kept" -m "kept value" || true
    pub "$v" -q 1 -r -t "$base/cleared" -m "to be cleared" || true
    pub "$v" -q 1 -r -t "$base/cleared" -n || true
    if start_sub "ret_$v" "$v" -q 1 -t "$base/kept" --retained-only; then
        pub "$v" -q 1 -t "$base/kept" -m "end marker" || true
        wait_sub "ret_$v" || true
        expect "ret_$v" "$check" "MSG|1|1|$base/kept|kept value"
    else
        fail "$check" "subscriber got no SUBACK"
    fi

    check="mosquitto $v retained: wildcard subscriber sees the replaced value, not the cleared one"
    if start_sub "retw_$v" "$v" -q 1 -t "$base/#" --retained-only; then
        pub "$v" -q 1 -t "$base/live" -m "end marker" || true
        wait_sub "retw_$v" || true
        expect "retw_$v" "$check" "MSG|1|1|$base/kept|kept value"
    else
        fail "$check" "subscriber got no SUBACK"
    fi
    # Leave no retained messages behind.
    pub "$v" -q 1 -r -t "$base/kept" -n || true
done

# ---------------------------------------------------------------------------------------------
# Wills: published when a client dies (SIGKILL, no DISCONNECT); not after a normal DISCONNECT.

for v in mqttv311 mqttv5; do
    base="interop/mosq/will/$v"
    check="mosquitto $v will published when the client is killed"
    if ! start_sub "willw_$v" "$v" -q 1 -t "$base/#" -C 1; then
        fail "$check" "watcher got no SUBACK"
        continue
    fi
    if start_sub "victim_$v" "$v" -q 0 -t "$base/victim-listens" -i "interop-victim-$v" \
        --will-topic "$base/status" --will-payload "victim gone" --will-qos 1; then
        eval "victim_pid=\$PID_victim_$v"
        kill -9 "$victim_pid" 2>/dev/null || true
        wait "$victim_pid" 2>/dev/null || true # reap it quietly (no "Killed" notice)
        wait_sub "willw_$v" || true
        expect "willw_$v" "$check" "MSG|1|0|$base/status|victim gone"
    else
        fail "$check" "victim got no SUBACK"
    fi

    check="mosquitto $v no will after a normal DISCONNECT"
    if ! start_sub "willn_$v" "$v" -q 1 -t "$base/#" -C 2; then
        fail "$check" "watcher got no SUBACK"
        continue
    fi
    # mosquitto_pub sends DISCONNECT after publishing; its will must not be published.
    # A will wrongly published on that DISCONNECT would reach the watcher before the end
    # marker, which a separate client publishes after mosquitto_pub has exited.
    pub "$v" -q 1 -t "$base/ordinary" -m "normal exit" \
        --will-topic "$base/status" --will-payload "must not appear" || true
    pub "$v" -q 1 -t "$base/end" -m "end marker" || true
    wait_sub "willn_$v" || true
    expect "willn_$v" "$check" "MSG|1|0|$base/ordinary|normal exit
MSG|1|0|$base/end|end marker"
done

# ---------------------------------------------------------------------------------------------
# Persistent sessions: subscribe with a persistent session, disconnect, publish QoS 1 while the
# client is offline, reconnect with the same client id and receive the queued messages.

for v in mqttv311 mqttv5; do
    topic="interop/mosq/persist/$v"
    id="interop-persist-$v"
    check="mosquitto $v persistent session receives QoS 1 messages queued while offline"
    session=(-c -i "$id")
    if [[ "$v" == mqttv5 ]]; then
        session+=(-x 300)
    fi
    # -E: exit (with a normal DISCONNECT) as soon as the subscription is acknowledged.
    if ! timeout "$WAIT" mosquitto_sub -h "$HOST" -p "$PORT" -V "$v" "${session[@]}" \
        -q 1 -t "$topic" -E >"$WORK/persist1_$v.out" 2>&1; then
        fail "$check" "first connection (subscribe and leave) failed"
        continue
    fi
    printf 'queued 1\nqueued 2\nqueued 3\n' | pub "$v" -q 1 -t "$topic" -l || true
    if timeout $((WAIT + 5)) mosquitto_sub -h "$HOST" -p "$PORT" -V "$v" "${session[@]}" \
        -q 1 -t "$topic" -C 3 -W "$WAIT" -d -F 'MSG|%q|%r|%t|%p' >"$WORK/persist2_$v.out" 2>&1; then
        :
    fi
    expect "persist2_$v" "$check" "MSG|1|0|$topic|queued 1
MSG|1|0|$topic|queued 2
MSG|1|0|$topic|queued 3"
    # Remove the session: connect once with a clean session.
    timeout "$WAIT" mosquitto_sub -h "$HOST" -p "$PORT" -V "$v" -i "$id" -t "$topic" -E \
        >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------------------------
# paho-mqtt.

echo "interop: running paho-mqtt checks"
paho_rc=0
python3 "$HERE/paho_test.py" --host "$HOST" --port "$PORT" | tee "$WORK/paho.out" || paho_rc=$?
summary="$(grep -E '^paho: [0-9]+ passed, [0-9]+ failed$' "$WORK/paho.out" | tail -n 1 || true)"
if [[ -n "$summary" ]]; then
    p="$(echo "$summary" | sed -E 's/^paho: ([0-9]+) passed, ([0-9]+) failed$/\1/')"
    f="$(echo "$summary" | sed -E 's/^paho: ([0-9]+) passed, ([0-9]+) failed$/\2/')"
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [[ $paho_rc -ne 0 && $f -eq 0 ]]; then
        fail "paho_test.py" "exited with status $paho_rc"
    fi
else
    fail "paho_test.py" "did not finish (exit status $paho_rc, no summary line)"
fi

# ---------------------------------------------------------------------------------------------
# The broker must still be alive, then shut down cleanly on SIGTERM.

check="culex still running after all checks"
if kill -0 "$BROKER_PID" 2>/dev/null; then
    pass "$check"
    check="culex exits 0 on SIGTERM"
    kill -TERM "$BROKER_PID"
    rc=0
    deadline=$((SECONDS + 20))
    while kill -0 "$BROKER_PID" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.05
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        fail "$check" "still running 20 s after SIGTERM"
    else
        wait "$BROKER_PID" || rc=$?
        BROKER_PID=""
        if [[ $rc -eq 0 ]]; then
            pass "$check"
        else
            fail "$check" "exit status $rc"
        fi
    fi
else
    fail "$check" "culex died"
fi

echo "interop: $PASSED passed, $FAILED failed"
if ((FAILED > 0)); then
    for n in "${FAILED_NAMES[@]}"; do
        echo "interop: failed: $n"
    done
    exit 1
fi
