#!/usr/bin/env bash
# Scores the complexity router on the routing-eval set, the way docs/routing.md reports it:
# each MMLU prompt as a one-message chat request, through `switchyard complexity`, then
# score.py (APGR, CPT(50%), CPT(80%)); the prompt-length baseline beside it.
#   scripts/complexity/eval.sh [path/to/switchyard]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/switchyard}"
data="${ROUTING_EVAL:-../shared/routing-eval}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 - "$data/mmlu.jsonl" "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(f"{sys.argv[2]}/bodies.jsonl", "w") as b, open(f"{sys.argv[2]}/length.txt", "w") as n:
    for r in rows:
        b.write(json.dumps({"messages": [{"role": "user", "content": r["prompt"]}]}) + "\n")
        n.write(f"{len(r['prompt'])}\n")
PY
"$bin" complexity < "$out/bodies.jsonl" > "$out/scores.txt"
echo "switchyard complexity: $(python3 "$data/score.py" "$data/mmlu.jsonl" "$out/scores.txt")"
echo "prompt length:         $(python3 "$data/score.py" "$data/mmlu.jsonl" "$out/length.txt")"
