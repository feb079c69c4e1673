#!/usr/bin/env bash
# CPU time per request of each of the proxy's threads at a fixed rate, usage events
# shipped or not (benches/threads.py does the counting, from each thread's schedstat, so
# the kernel's share is in it).
#
#   benches/threads.sh [binary]                 # off, then on; three rounds each
#   RATE=200 SECS=10 ROUNDS=2 benches/threads.sh target/ci/switchyard
#
# The proxy (two worker threads), the mock upstream and a collector on SQLite, natively
# on loopback ports 9290-9293; the policy in a directory of its own (see callgrind.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT/conf"
hash=$(printf %s bench-ingest | sha256sum | cut -d' ' -f1)
printf 'listen: 127.0.0.1:9293\ndatabase: "sqlite://%s/usage.db"\ntokens: { ingest: ["sha256:%s"] }\n' \
  "$OUT" "$hash" > "$OUT/collector.yaml"
"$bin" mock-upstream --port 9290 >"$OUT/mock.log" 2>&1 &
pids=($!)
"$bin" collector --config "$OUT/collector.yaml" >"$OUT/collector.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

run() {  # $1 = off|on
  cat > "$OUT/conf/policy.yaml" <<Y
listen: { proxy: "127.0.0.1:9291", admin: "127.0.0.1:9292" }
server: { threads: 2 }
providers:
  mock: { format: openai, base_url: "http://127.0.0.1:9290/v1", api_key: sk-provider }
models:
  bench-model: { provider: mock, name: mock-model }
routes:
  - { name: bench, match: { model: "bench-*" }, strategy: priority, targets: [bench-model] }
Y
  if [ "$1" = on ]; then
    rm -rf "$OUT/spool"
    printf 'telemetry: { collector: "http://127.0.0.1:9293", token: bench-ingest, spool_dir: "%s/spool", compression: %s }\n' "$OUT" "${COMPRESSION:-none}" >> "$OUT/conf/policy.yaml"
  fi
  "$bin" proxy --config "$OUT/conf/policy.yaml" >"$OUT/proxy-$1.log" 2>&1 &
  local proxy=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:9292/readyz && break; sleep 0.1; done
  echo "shipping=$1"
  python3 benches/threads.py 127.0.0.1 9291 "${RATE:-500}" "${SECS:-15}" "$proxy"
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
}
for _ in $(seq "${ROUNDS:-3}"); do run off; run on; done
