#!/usr/bin/env bash
# Runs the sidecar on conf/example.yaml (or $SWITCHYARD_CONFIG). With no OPENAI_API_KEY set,
# it also starts the bundled mock upstream on 127.0.0.1:9000, which the example targets.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
config="${SWITCHYARD_CONFIG:-conf/example.yaml}"

command -v cmake >/dev/null 2>&1 || scripts/setup.sh
cargo build --release
bin="$CARGO_TARGET_DIR/release/switchyard"

if [ -z "${OPENAI_API_KEY:-}" ]; then
  echo "run: OPENAI_API_KEY is not set; starting the mock upstream on 127.0.0.1:9000"
  "$bin" mock-upstream --port 9000 --chunk-delay-ms 30 &
  mock=$!
  trap 'kill $mock 2>/dev/null || true' EXIT
fi
"$bin" check --config "$config"
"$bin" proxy --config "$config"
