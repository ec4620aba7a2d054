# Shared by scripts/bench-cluster.sh and scripts/bench-cluster-scale.sh (sourced): process
# bookkeeping, nats-servers and Culex nodes on loopback. The caller sets BENCH_NAME, WORK and
# CULEX, and PIDS=().
log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_log FILE TEXT: until FILE contains TEXT (60 s at most).
wait_log() {
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "$BENCH_NAME: no '$2' in $1:" >&2; tail -20 "$1" >&2; exit 1
}

# start_nats COUNT: COUNT nats-servers (a cluster when more than one); sets NATS_URLS.
start_nats() {
    local count=$1 i ports=() cports=()
    for i in $(seq "$count"); do ports+=("$(free_port)"); cports+=("$(free_port)"); done
    NATS_URLS=""
    for i in $(seq 0 $((count - 1))); do
        local dir="$WORK/nats$i" args=()
        rm -rf "$dir"; mkdir -p "$dir"
        if [ "$count" -gt 1 ]; then
            local routes=""
            for j in $(seq 0 $((count - 1))); do
                [ "$j" = "$i" ] && continue
                routes="${routes:+$routes,}nats://127.0.0.1:${cports[$j]}"
            done
            args=(--cluster_name bench --cluster "nats://127.0.0.1:${cports[$i]}" --routes "$routes")
        fi
        nats-server -a 127.0.0.1 -p "${ports[$i]}" -js -sd "$dir" --name "n$i" "${args[@]}" >/dev/null 2>"$dir/log" &
        PIDS+=($!)
        wait_log "$dir/log" "Server is ready"
        NATS_URLS="${NATS_URLS:+$NATS_URLS,}nats://127.0.0.1:${ports[$i]}"
    done
}

# start_node NAME [REPLICAS]: a culex node (in the cluster when NATS_URLS is set); sets
# NODE_PORT and NODE_PID.
start_node() {
    local name=$1 replicas=${2:-1} dir="$WORK/$1"
    rm -rf "$dir"; mkdir -p "$dir"
    {
        echo "listener 0 127.0.0.1"
        echo "allow_anonymous true"
        echo "sys_interval 0"
        echo "log_type information"
        echo "connection_messages false"
        echo "max_inflight_messages 100"
        if [ -n "${NATS_URLS:-}" ]; then
            echo "cluster_backplane $NATS_URLS"
            echo "cluster_node_name $name"
            echo "cluster_replicas $replicas"
        fi
    } > "$dir/culex.conf"
    "$CULEX" -c "$dir/culex.conf" >/dev/null 2>"$dir/log" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_log "$dir/log" "listening on 127.0.0.1:"
    if [ -n "${NATS_URLS:-}" ]; then wait_log "$dir/log" "cluster link up"; fi
    NODE_PORT=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/log" | head -1)
}

# NAME|ARGS|WHERE: WHERE "remote" puts the subscribers on nodes 2 and 3, "local" on node 1.
