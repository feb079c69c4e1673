#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic to about ±0.2 %,
# where wall-clock CPU on a shared 2-core VM moves by ±20 %. Use it to judge a change to the
# hot path before confirming with `cargo bench --bench load`.
#
#   benches/callgrind.sh [chat|stream|big] [binary]
#   SHIPPING=1 benches/callgrind.sh chat [binary]   # with usage events shipped to a collector
#   SHIPPING=1 COMPRESSION=zstd benches/callgrind.sh chat [binary]   # … compressed (or gzip)
#   GOVERNANCE=local benches/callgrind.sh chat [binary]   # admission: rpm, tpm and a budget
#   GOVERNANCE=redis benches/callgrind.sh chat [binary]   # … decided by Redis (127.0.0.1:6379)
#   STRATEGY=fastest benches/callgrind.sh chat [binary]   # a route of two targets chosen by
#     fastest, cheapest, least-busy or complexity (default: priority over one target)
#
# Starts the mock upstream and the proxy (under valgrind) on loopback ports 9190-9192,
# warms up, zeroes the counters, drives the workload with wrk for 8 s at 8 connections,
# and prints instructions per request. The profile stays in $OUT/callgrind.out.* for
# callgrind_annotate --inclusive=yes.
set -euo pipefail
cd "$(dirname "$0")/.."
workload="${1:-chat}"
bin="${2:-${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard}"
OUT="${OUT:-$(mktemp -d)}"
for tool in valgrind wrk; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -qq valgrind wrk >/dev/null
  fi
done
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release first)"; exit 1; }

# The policy in a directory of its own: the reload watcher wakes for any file written beside
# it (the spool, the collector's database), which a real deployment does not do.
mkdir -p "$OUT/conf"
cat > "$OUT/conf/policy.yaml" <<EOF
listen: { proxy: "127.0.0.1:9191", admin: "127.0.0.1:9192" }
server: { threads: 2 }
providers:
  mock: { format: openai, base_url: "http://127.0.0.1:9190/v1", api_key: sk-provider }
models:
  bench-model: { provider: mock, name: mock-model, price: { input: 0.15, output: 0.60 } }
EOF
[ -z "${STRATEGY:-}" ] || cat >> "$OUT/conf/policy.yaml" <<EOF
  bench-model-2: { provider: mock, name: mock-model-2, quality: 80, price: { input: 2.5, output: 10 } }
EOF
echo "routes:" >> "$OUT/conf/policy.yaml"
case "${STRATEGY:-}" in
  "") route='strategy: priority, targets: [bench-model]' ;;
  complexity) route='strategy: complexity, tiers: [ { model: bench-model, up_to: 0.5 }, bench-model-2 ]' ;;
  *) route="strategy: $STRATEGY, targets: [bench-model, bench-model-2]" ;;
esac
echo "  - { name: bench, match: { model: \"bench-*\" }, $route }" >> "$OUT/conf/policy.yaml"
if [ -n "${GOVERNANCE:-}" ]; then
  # Every level counted: an rpm log, a tpm window and a budget that never runs out.
  team="bench-$$-$RANDOM"
  [ "$GOVERNANCE" = redis ] && echo 'governance: { redis: "redis://127.0.0.1:6379" }' >> "$OUT/conf/policy.yaml"
  cat >> "$OUT/conf/policy.yaml" <<EOF
identity: { team: $team }
teams:
  $team: { limits: { rpm: 1000000, tpm: 1000000000 }, budget: { usd: 1000000, per: day } }
EOF
fi
if [ -n "${SHIPPING:-}" ]; then
  # Usage events on: spooled to disk and shipped to a collector on SQLite (not under
  # valgrind: only the sidecar's instructions are counted, its spool and shipper included).
  hash=$(printf %s bench-ingest | sha256sum | cut -d' ' -f1)
  cat > "$OUT/collector.yaml" <<EOF
listen: 127.0.0.1:9193
database: "sqlite://$OUT/usage.db"
tokens: { ingest: ["sha256:$hash"] }
EOF
  cat >> "$OUT/conf/policy.yaml" <<EOF
telemetry:
  collector: "http://127.0.0.1:9193"
  token: bench-ingest
  spool_dir: "$OUT/spool"
  compression: ${COMPRESSION:-none}
EOF
  "$bin" collector --config "$OUT/collector.yaml" >"$OUT/collector.log" 2>&1 &
  collector=$!
fi
python3 - "$workload" "$OUT/request.lua" <<'EOF'
import json, sys
workload, path = sys.argv[1], sys.argv[2]
size = 256 * 1024 - 200 if workload == "big" else 1900
body = {"model": "bench-model", "messages": [{"role": "user", "content": "x" * size}],
        "max_tokens": 64}
if workload == "stream":
    body["stream"] = True
with open(path, "w") as f:
    f.write('wrk.method="POST"\nwrk.headers["Content-Type"]="application/json"\n')
    f.write("wrk.body=[[" + json.dumps(body) + "]]\n")
EOF

"$bin" mock-upstream --port 9190 --chunks 16 >"$OUT/mock.log" 2>&1 &
mock=$!
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
  "$bin" proxy --config "$OUT/conf/policy.yaml" >"$OUT/proxy.log" 2>&1 &
proxy=$!
trap 'kill $proxy $mock ${collector:-} 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf -o /dev/null http://127.0.0.1:9192/readyz && break
  sleep 0.5
done
url=http://127.0.0.1:9191/v1/chat/completions
wrk -t1 -c8 -d3s -s "$OUT/request.lua" "$url" >/dev/null
callgrind_control -z "$proxy" >/dev/null
requests=$(wrk -t1 -c8 -d8s -s "$OUT/request.lua" "$url" | awk '/requests in/ {print $1}')
callgrind_control -d "$proxy" >/dev/null
sleep 1
dump=$(ls "$OUT"/callgrind.out.*.1 | head -1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
echo "workload=$workload requests=$requests instructions=$total per_request=$((total / requests))"
echo "profile: $dump"
