#!/usr/bin/env bash
# CPU time (user + system, from /proc) the proxy spends per request, with usage events
# shipped or not — the kernel's share included, which callgrind does not count.
#
#   benches/cpu.sh [binary]            # off, then on, three rounds each
#   CONNS=1 COMPRESSION=gzip benches/cpu.sh [binary]   # one connection (the proxy not
#     saturated), batches gzip or zstd instead of plain NDJSON
#   RATE=500 SECS=12 ROUNDS=8 benches/cpu.sh [binary]   # instead: a fixed rate, and each
#     thread's CPU per request (benches/threads.py), to tell the spool's threads from the
#     proxy's workers
#
# Proxy natively on loopback ports 9290-9293, the mock upstream, and with shipping a
# collector on SQLite; wrk drives 2 KB chat completions at $CONNS (8) connections for 10 s
# a round.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard}"
OUT="${OUT:-$(mktemp -d)}"
# The policy in a directory of its own (see callgrind.sh).
mkdir -p "$OUT/conf"
command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
hash=$(printf %s bench-ingest | sha256sum | cut -d' ' -f1)
printf 'listen: 127.0.0.1:9293\ndatabase: "sqlite://%s/usage.db"\ntokens: { ingest: ["sha256:%s"] }\n' \
  "$OUT" "$hash" > "$OUT/collector.yaml"
python3 - "$OUT/request.lua" <<'PY'
import json, sys
body = {"model": "bench-model", "messages": [{"role": "user", "content": "x" * 1900}], "max_tokens": 64}
open(sys.argv[1], "w").write('wrk.method="POST"\nwrk.headers["Content-Type"]="application/json"\nwrk.body=[[' + json.dumps(body) + ']]\n')
PY
"$bin" mock-upstream --port 9290 --chunks 16 >"$OUT/mock.log" 2>&1 &
pids=($!)
"$bin" collector --config "$OUT/collector.yaml" >"$OUT/collector.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
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
  if [ -n "${RATE:-}" ]; then
    echo "shipping=$1"
    python3 benches/threads.py 127.0.0.1 9291 "$RATE" "${SECS:-15}" "$proxy"
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
    return
  fi
  local url=http://127.0.0.1:9291/v1/chat/completions
  wrk -t1 -c8 -d2s -s "$OUT/request.lua" "$url" >/dev/null
  local before; before=$(cpu_ticks "$proxy")
  local n; n=$(wrk -t1 -c"${CONNS:-8}" -d10s -s "$OUT/request.lua" "$url" | awk '/requests in/ {print $1}')
  sleep 1.5   # the shipper's last batch belongs to these requests
  local after; after=$(cpu_ticks "$proxy")
  local hz; hz=$(getconf CLK_TCK)
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
  python3 -c "print(f'shipping=$1 requests={$n} cpu_us_per_request={($after-$before)/$hz/$n*1e6:.1f}')"
}
for _ in $(seq "${ROUNDS:-3}"); do run off; run on; done
