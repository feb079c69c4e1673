"""Which measure of a prompt's length routes MMLU best, untrained (docs/routing.md):
bytes, words, distinct words, sentences, each alone, and the shipped scorer's weights with
ln(1 + bytes) or ln(1 + words) as its length term.

    python3 scripts/complexity/length_measures.py [path/to/routing-eval]
"""
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import features as F  # noqa: E402

DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "routing-eval")
EVAL = os.path.join(DATA, "mmlu.jsonl")

# The shipped scorer's text weights beside its length term (route/complexity.rs); the
# request-shape features are the same for every MMLU row, so they do not change the order.
SHIPPED = {"num_density": 1.0, "math_density": 0.2, "latex": 0.3, "code_density": 0.15,
           "calc_kw": 0.4, "reason_kw": 0.4, "code_kw": 0.3, "simple_kw": -0.6,
           "neg_kw": 0.1, "cond_kw": 0.2, "pronoun_share": 4.0}


def apgr(name, scores):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(f"{s:.6f}" for s in scores) + "\n")
    out = subprocess.run([sys.executable, os.path.join(DATA, "score.py"), EVAL, f.name],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    r = json.loads(out)
    print(f"{name:32s} APGR {r['APGR']:.4f}  CPT(50%) {r['CPT50']:.1f}  CPT(80%) {r['CPT80']:.1f}")


def main():
    rows = [json.loads(line) for line in open(EVAL) if line.strip()]
    cols = {k: [] for k in ("bytes", "words", "distinct", "sentences", "rest")}
    for r in rows:
        text = r["prompt"]
        c = F.scan(text.encode("utf-8"))
        words = [w.lower() for w in "".join(ch if ch.isascii() and ch.isalpha() else " "
                                            for ch in text).split()]
        v = dict(zip(F.NAMES, F.features({"messages": [{"role": "user", "content": text}]})))
        cols["bytes"].append(c["bytes"])
        cols["words"].append(c["words"])
        cols["distinct"].append(len(set(words)))
        cols["sentences"].append(c["sent_ends"])
        cols["rest"].append(sum(w * v[k] for k, w in SHIPPED.items()))
    for k in ("bytes", "words", "distinct", "sentences"):
        apgr(k + " alone", cols[k])
    for k in ("bytes", "words"):
        apgr(f"shipped, ln(1 + {k})",
             [math.log1p(n) + rest for n, rest in zip(cols[k], cols["rest"])])


if __name__ == "__main__":
    main()
