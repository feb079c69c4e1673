#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and end-to-end tests (real binary,
# real sockets, bundled mock upstream), then the official Python SDKs end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "== cargo test"
cargo test --release
echo "== python SDK tests"
SWITCHYARD_BIN="$CARGO_TARGET_DIR/release/switchyard" .venv/bin/pytest -q tests/python
