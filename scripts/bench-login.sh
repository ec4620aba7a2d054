#!/usr/bin/env bash
# Logins under a password-guessing storm (issue 19), Culex and (with --mosquitto) Mosquitto on
# the same password file: 40 clients send wrong passwords from 127.0.0.2 as fast as they are
# answered, while a valid user logs in every 50 ms from 127.0.0.1 and a connected client
# publishes QoS 1 to itself; afterwards known and unknown user names with wrong passwords are
# timed in alternation. Prints culex-bench's JSON report per broker.
#
#   scripts/bench-login.sh [--mosquitto] [--no-limiter] [--duration S] [--storm N]
#
# --no-limiter sets `auth_failure_limit 0` for Culex: the storm is then hashed in full (as one
# spread over many addresses would be), showing what the bounded pool and the cache do alone.
#
# Needs release builds of culex and culex-bench (BIN_DIR, default target/release). The password
# file is written by `culex passwd` with its defaults ($7$, PBKDF2-SHA512, 210,000 iterations).
set -euo pipefail
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
MOSQ=0; DURATION=20; STORM=40; LIMIT=10
while [ $# -gt 0 ]; do
  case "$1" in
    --mosquitto) MOSQ=1 ;;
    --no-limiter) LIMIT=0 ;;
    --duration) DURATION="$2"; shift ;;
    --storm) STORM="$2"; shift ;;
    *) echo "bench-login.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
DIR=$(mktemp -d /tmp/culex-bench-login.XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
PORT=21885
"$BIN/culex" passwd -c -b "$DIR/passwd" device-1 'correct horse battery' >/dev/null
for i in 2 3 4 5 6 7 8; do "$BIN/culex" passwd -b "$DIR/passwd" "device-$i" "secret-$i" >/dev/null; done
chmod 0755 "$DIR"; chmod 0644 "$DIR/passwd"   # Mosquitto drops root for its own user

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-login.sh: broker did not start" >&2; cat "$DIR/log" >&2; exit 1
}

run() { # $1 = label, rest = broker command
  local label=$1; shift
  "$@" > "$DIR/log" 2>&1 & PID=$!
  wait_port
  "$BIN/culex-bench" --port $PORT --label "$label" logins --user device-1 \
      --password 'correct horse battery' --storm "$STORM" --duration "$DURATION"
  kill $PID; wait $PID 2>/dev/null || true; PID=""
  sleep 0.5
}

cat > "$DIR/culex.conf" <<CONF
listener $PORT 0.0.0.0
allow_anonymous false
password_file $DIR/passwd
persistence false
log_type error
user root
auth_failure_limit $LIMIT
CONF
run culex "$BIN/culex" -c "$DIR/culex.conf"

if [ "$MOSQ" = 1 ]; then
  cat > "$DIR/mosquitto.conf" <<CONF
listener $PORT 0.0.0.0
allow_anonymous false
password_file $DIR/passwd
persistence false
log_dest none
CONF
  run mosquitto mosquitto -c "$DIR/mosquitto.conf"
fi
