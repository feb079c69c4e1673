#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 20) from the committed seeds in
# fuzz/seeds/<target>; new inputs found go to a corpus outside the tree. Needs the nightly
# toolchain (present on this project's machines) and cargo-fuzz (installed here if missing).
#   scripts/fuzz.sh            # every target, 20 s each (what CI runs)
#   scripts/fuzz.sh 3600 head  # one target for an hour
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
shift || true
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is not installed (rustup toolchain list)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
corpus_root="${FUZZ_CORPUS:-$target_dir/corpus}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build --target-dir "$target_dir"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$corpus_root/$t"
  echo "== fuzz $t (${secs}s)"
  rc=0
  cargo +nightly fuzz run --target-dir "$target_dir" "$t" "$corpus_root/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t failed (exit $rc); the input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each, no failure"
