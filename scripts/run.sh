#!/usr/bin/env bash
# Runs the sidecar on conf/example.yaml (or $SWITCHYARD_CONFIG) and, beside it, the usage
# collector on conf/collector.yaml (SQLite, dashboard at http://127.0.0.1:7070/). With no
# OPENAI_API_KEY set it also starts the bundled mock upstream on 127.0.0.1:9000, which the
# example targets.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
config="${SWITCHYARD_CONFIG:-conf/example.yaml}"
collector_config="${SWITCHYARD_COLLECTOR_CONFIG:-conf/collector.yaml}"

command -v cmake >/dev/null 2>&1 || scripts/setup.sh
cargo build --release
bin="$CARGO_TARGET_DIR/release/switchyard"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
if [ -z "${OPENAI_API_KEY:-}" ]; then
  echo "run: OPENAI_API_KEY is not set; starting the mock upstream on 127.0.0.1:9000"
  "$bin" mock-upstream --port 9000 --chunk-delay-ms 30 &
  pids+=($!)
fi
"$bin" check --config "$config" --collector "$collector_config"
"$bin" collector --config "$collector_config" &
pids+=($!)
echo "run: collector on 127.0.0.1:7070 — dashboard http://127.0.0.1:7070/ (demo token: demo-admin-token)"
"$bin" proxy --config "$config"
